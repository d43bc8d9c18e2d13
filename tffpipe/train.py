"""`python -m tffpipe.train`: federated training from the command line.

Parses flags (generated from the declared settings, `tffpipe.cli`) into a
frozen `RunConfig` and hands it to `tffpipe.api.train`. Rerunning the same
command resumes the run. Flags are checked before TensorFlow is imported, so
a bad one is reported in a fraction of a second.

  python -m tffpipe.train --task=digits --rounds=50 --root_dir=/tmp/tffpipe
  python -m tffpipe.train --flagfile=my_run.flags
"""

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

from tffpipe import cli
from tffpipe import errors
from tffpipe.program import progress
from tffpipe.program import run_lock
from tffpipe.program import saved_settings
from tffpipe.runtimes import processes

cli.define_launcher_flags()
cli.define_setting_flags()
cli.define_task_flags()

FLAGS = flags.FLAGS


RESUME_HINT = "rerun the same command to resume from the last checkpoint"


def _fail(message: str, code: int = 2, error: BaseException | None = None) -> None:
    if error is not None and FLAGS.is_parsed() and FLAGS.verbose:
        cause = error.__cause__ or error
        traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
    print(f"error: {message}", file=sys.stderr, flush=True)
    processes.exit_now(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with one-line errors and grouped short help."""
    if cli.wants_short_help(argv):
        cli.print_short_help_and_exit("python -m tffpipe.train")
    try:
        cli.define_chosen_plugin_flags(argv)
        if cli.wants_full_help(argv):
            cli.print_full_help_and_exit("python -m tffpipe.train")
        return FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).removeprefix("ERROR:: "))
    return []


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.list_tasks:
        from tffpipe.tasks import listing

        print(listing.task_table(), flush=True)
        processes.exit_now(0)
    try:
        cfg = cli.config_from_flags()
    except errors.UserError as e:
        _fail(str(e), error=e)
    # First, so that SIGTERM or Ctrl-C at any later moment (TensorFlow's
    # import included) ends in one line.
    processes.raise_on_sigterm()
    processes.raise_once_on_interrupt()
    try:
        # Before TensorFlow loads: a second launcher on this folder stops at once.
        with run_lock.hold(cfg.output.run_dir):
            saved_settings.refuse_changed_settings(cfg)  # before TensorFlow loads
            from tffpipe import api
            from tffpipe import compat
            from tffpipe.runtimes import memory

            if not FLAGS["verbosity"].present:
                compat.quiet_library_logs()
            memory.limit_arenas_in_this_process()
            result, _ = api.train(cfg, lambda line: print(line, flush=True))
    except errors.UserError as e:
        _fail(str(e), error=e)
    except KeyboardInterrupt:
        _fail(f"interrupted; {RESUME_HINT}", 130)
    except errors.Terminated:
        _fail(f"terminated (SIGTERM); {RESUME_HINT}", 143)
    print(progress.summary_line(result), flush=True)
    print(f"model exported to {os.path.join(cfg.output.run_dir, 'export')}", flush=True)
    if getattr(result, "final_clients", None):
        print(result.worst_served, flush=True)
    processes.exit_now(0)


def run_main() -> None:
    # Not `app.run(main)`: under it, a TensorFlow first imported inside `main`
    # (as here, so that flag errors come before it) builds Keras Sequential
    # models wrongly ("Output tensors of a Sequential model must be the output
    # of a TensorFlow `Layer`"). The flags are parsed the same way.
    app.define_help_flags()
    argv = _parse_flags(sys.argv)
    logging.use_absl_handler()
    main(argv)


if __name__ == "__main__":
    run_main()
