"""`--attack=sign_flip`: attackers send their honest update multiplied by -k (`--attack_scale`).

A plain mean of n updates, m of them flipped, moves by (n - m - k m) / n of
the honest direction: with k >= (n - m) / m the model stops learning or moves
backwards (Blanchard et al. 2017 and Li et al. 2019 use this attack).
"""

from tffpipe.attacks import base


class SignFlip(base.UpdateAttack):
    key = "sign_flip"

    def poisoned_update(self, update, seed, options, benign=None):
        return [-options.scale * u for u in update]

    def describe(self, ctx):
        return f"sign flipping: attackers send their update times -{ctx.scale:g}"


ATTACK = SignFlip()
