"""The reference article's Keras model (../shared/seed), rebuilt in Keras 3 for speed comparisons.

    python benchmarks/keras_reference.py [--policy float32|mixed_bfloat16] [--graph eager|function|xla]
        [--train-steps 10] [--sample-repeats 2] [--sample-images 64] [--steps 20]

Written from SPEC.md and the article's code: the same U-Net, offset cosine schedule, train step
(GradientTape over the summed per-pixel L1 map, AdamW 1e-3 / 1e-4, EMA 0.999 over every weight)
run by `fit` as the article does, and its eager DDIM loop for sampling. --graph function wraps the
sampling loop's network call in tf.function (what a TensorFlow user does for inference; the
article calls it eagerly), --graph xla in tf.function(jit_compile=True). `mixed_bfloat16` is Keras'
mixed-precision policy with the three casts it needs: the embedding layer and the network output
stay float32, as does the loss. Trains on random images (the speed does not depend on the pixels).
Prints one line `RESULT {json}`: training images/s (mean over the timed steps, after 3 warm-up
steps; none with --train-steps 0), sampling seconds (median), peak resident memory. Needs
TensorFlow: pip install .[reference]
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time

import numpy as np

IMAGE_SIZE, BATCH_SIZE, NOISE_EMBEDDING_SIZE, EMA = 64, 64, 32, 0.999
WIDTHS, BLOCK_DEPTH = [32, 64, 96], 2


def build(policy: str, graph: str = "eager"):
    import keras
    import tensorflow as tf
    from keras import activations, layers, losses, models, optimizers
    keras.mixed_precision.set_global_policy(policy)

    def offset_cosine_diffusion_schedule(diffusion_times):
        start_angle, end_angle = tf.acos(0.95), tf.acos(0.02)
        angles = start_angle + diffusion_times * (end_angle - start_angle)
        return tf.sin(angles), tf.cos(angles)  # noise_rates, signal_rates

    def sinusoidal_embedding(x):
        frequencies = tf.exp(tf.linspace(tf.math.log(1.0), tf.math.log(1000.0), NOISE_EMBEDDING_SIZE // 2))
        angular_speeds = 2.0 * math.pi * frequencies
        return tf.concat([tf.sin(angular_speeds * x), tf.cos(angular_speeds * x)], axis=3)

    def residual_block(width):
        def apply(x):
            residual = x if x.shape[3] == width else layers.Conv2D(width, kernel_size=1)(x)
            x = layers.BatchNormalization(center=False, scale=False)(x)
            x = layers.Conv2D(width, kernel_size=3, padding="same", activation=activations.swish)(x)
            x = layers.Conv2D(width, kernel_size=3, padding="same")(x)
            return layers.Add()([x, residual])
        return apply

    noisy_images = layers.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    x = layers.Conv2D(32, kernel_size=1)(noisy_images)
    noise_variances = layers.Input(shape=(1, 1, 1))
    # cast 1 of 3: the embedding in float32 (sin(2 pi 1000 v) in bfloat16 is noise)
    noise_embedding = layers.Lambda(sinusoidal_embedding, dtype="float32")(noise_variances)
    noise_embedding = layers.UpSampling2D(size=IMAGE_SIZE, interpolation="nearest")(noise_embedding)
    x = layers.Concatenate()([x, noise_embedding])
    skips = []
    for width in WIDTHS:
        for _ in range(BLOCK_DEPTH):
            x = residual_block(width)(x)
            skips.append(x)
        x = layers.AveragePooling2D(pool_size=2)(x)
    x = residual_block(128)(x)
    x = residual_block(128)(x)
    for width in reversed(WIDTHS):
        x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
        for _ in range(BLOCK_DEPTH):
            x = layers.Concatenate()([x, skips.pop()])
            x = residual_block(width)(x)
    # cast 2 of 3: the predicted noise in float32
    x = layers.Conv2D(3, kernel_size=1, kernel_initializer="zeros", dtype="float32")(x)
    unet = models.Model([noisy_images, noise_variances], x, name="unet")

    class DiffusionModel(models.Model):
        def __init__(self):
            super().__init__()
            self.normalizer = layers.Normalization(dtype="float32")
            self.network = unet
            # Keras 3 rebuilds the clone from its config: the Lambda's function must be findable by name
            with keras.saving.custom_object_scope({"sinusoidal_embedding": sinusoidal_embedding}):
                self.ema_network = models.clone_model(self.network)
            self.diffusion_schedule = offset_cosine_diffusion_schedule
            predict = lambda inputs: self.ema_network(inputs, training=False)
            self.predict_noise = predict if graph == "eager" else tf.function(predict, jit_compile=graph == "xla")

        def denormalize(self, images):
            images = self.normalizer.mean + images * self.normalizer.variance ** 0.5
            return tf.clip_by_value(images, 0.0, 1.0)

        def denoise(self, noisy_images, noise_rates, signal_rates, training):
            if training:
                pred_noises = self.network([noisy_images, noise_rates ** 2], training=True)
            else:
                pred_noises = self.predict_noise([noisy_images, noise_rates ** 2])
            pred_noises = tf.cast(pred_noises, tf.float32)  # cast 3 of 3 (a no-op in float32)
            pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
            return pred_noises, pred_images

        def reverse_diffusion(self, initial_noise, diffusion_steps):
            num_images = initial_noise.shape[0]
            step_size = 1.0 / diffusion_steps
            current_images = initial_noise
            for step in range(diffusion_steps):
                diffusion_times = tf.ones((num_images, 1, 1, 1)) - step * step_size
                noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
                pred_noises, pred_images = self.denoise(current_images, noise_rates, signal_rates, training=False)
                next_noise_rates, next_signal_rates = self.diffusion_schedule(diffusion_times - step_size)
                current_images = next_signal_rates * pred_images + next_noise_rates * pred_noises
            return pred_images

        def generate(self, num_images, diffusion_steps):
            initial_noise = tf.random.normal(shape=(num_images, IMAGE_SIZE, IMAGE_SIZE, 3))
            return self.denormalize(self.reverse_diffusion(initial_noise, diffusion_steps))

        def train_step(self, images):
            images = self.normalizer(images, training=True)
            noises = tf.random.normal(shape=(BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3))
            diffusion_times = tf.random.uniform(shape=(BATCH_SIZE, 1, 1, 1), minval=0.0, maxval=1.0)
            noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
            noisy_images = signal_rates * images + noise_rates * noises
            with tf.GradientTape() as tape:
                pred_noises, _ = self.denoise(noisy_images, noise_rates, signal_rates, training=True)
                noise_loss = self.loss(noises, pred_noises)  # (B, H, W): the tape sums it
            gradients = tape.gradient(noise_loss, self.network.trainable_weights)
            self.optimizer.apply_gradients(zip(gradients, self.network.trainable_weights))
            for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
                ema_weight.assign(EMA * ema_weight + (1 - EMA) * weight)
            return {"n_loss": tf.reduce_mean(noise_loss)}

    model = DiffusionModel()
    model.compile(optimizer=optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4),
                  loss=losses.mean_absolute_error)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default="float32", choices=["float32", "mixed_bfloat16"])
    p.add_argument("--graph", default="eager", choices=["eager", "function", "xla"],
                   help="how sampling calls the network (default eager, as the article)")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--sample-repeats", type=int, default=2)
    p.add_argument("--sample-images", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    import keras
    import tensorflow as tf
    model = build(args.policy, args.graph)
    rng = np.random.default_rng(0)
    images = rng.random((BATCH_SIZE * 4, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    model.normalizer.adapt(images)
    total = args.warmup_steps + args.train_steps
    dataset = tf.data.Dataset.from_tensor_slices(images).repeat().batch(BATCH_SIZE, drop_remainder=True)

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    train_ips = None
    if args.train_steps:
        clock = Clock()
        model.fit(dataset, epochs=1, steps_per_epoch=total, callbacks=[clock], verbose=0)
        timed = clock.ends[args.warmup_steps - 1:]
        train_ips = BATCH_SIZE * (len(timed) - 1) / (timed[-1] - timed[0])
    model.generate(args.sample_images, 1)  # warm-up (and the tracing of --graph function or xla)
    seconds = []
    for _ in range(args.sample_repeats):
        start = time.perf_counter()
        model.generate(args.sample_images, args.steps).numpy()
        seconds.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({
        "policy": args.policy, "graph": args.graph, "train_ips": train_ips, "sample_s": statistics.median(seconds),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "parameters": int(sum(np.prod(w.shape) for w in model.network.trainable_weights))}), flush=True)


if __name__ == "__main__":
    main()
