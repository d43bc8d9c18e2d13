"""`--attack=scale`: attackers send their honest update boosted by k (`--attack_scale`).

The boost is the "model replacement" step of Bagdasaryan et al. (AISTATS
2020): one boosted update outweighs the other clients' in a plain mean.
"""

from tffpipe.attacks import base


class Scale(base.UpdateAttack):
    key = "scale"

    def poisoned_update(self, update, seed, options, benign=None):
        return [options.scale * u for u in update]

    def describe(self, ctx):
        return f"scaling: attackers send their update times {ctx.scale:g}"


ATTACK = Scale()
