"""`--attack=gaussian`: attackers send Gaussian noise with the norm of their honest update.

The noise direction is random (seeded per round and attacker) and its L2
norm over the whole update equals the honest update's, so a defence cannot
reject it by its norm alone (Blanchard et al. 2017, "Gaussian Byzantine").
"""

from tffpipe.attacks import base


class Gaussian(base.UpdateAttack):
    key = "gaussian"
    summary = "Gaussian: attackers send random updates with the norm of their honest one"

    def poisoned_update(self, update, seed, options, benign=None):
        import tensorflow as tf

        noise = [
            tf.random.stateless_normal(tf.shape(u), seed=tf.stack([seed, tf.constant(i, tf.int64)]), dtype=u.dtype)
            for i, u in enumerate(update)
        ]
        honest_norm = tf.linalg.global_norm(update)
        noise_norm = tf.linalg.global_norm(noise)
        return [n * (honest_norm / tf.maximum(noise_norm, 1e-12)) for n in noise]


ATTACK = Gaussian()
