"""A whole ReF-LDM restoration with numpy and onnxruntime only, from a `refface export onnx` folder.

This file imports nothing but the standard library, numpy and onnxruntime (not torch, not refface), so it can
be copied next to the ONNX files and run where PyTorch is not installed; `refface export onnx` puts a copy in
every export folder. It follows refface's exact mode: DDIM (eta 0) on the schedule in `refface_onnx.json`,
classifier-free guidance toward the references with the null condition refface uses, and the strength
(SDEdit) option. Given refface's initial noise (`noise=`) it reproduces refface's output to float rounding;
with a seed it draws its own noise from numpy, which is not PyTorch's generator.

    python onnx_sampler.py EXPORT_FOLDER lq.png ref0.png ref1.png --output restored.png   (needs Pillow)

    restorer = OnnxRestorer("refldm-onnx")
    images = restorer.restore(lq, [ref0, ref1])    # uint8 [H, W, 3] arrays -> uint8 [B, H, W, 3]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DESCRIPTION_FILE = "refface_onnx.json"
SPACINGS = ("uniform_trailing", "uniform")


class OnnxSamplerError(ValueError):
    """Bad input to the ONNX sampler, explained in one sentence."""


def ddim_timesteps(total: int, steps: int, spacing: str) -> np.ndarray:
    """The DDIM timesteps, largest first, as refface (diffusers' DDIMScheduler) sets them."""
    if spacing not in SPACINGS:
        raise OnnxSamplerError(f"Unknown timestep spacing '{spacing}'; choose one of {', '.join(SPACINGS)}.")
    if not 1 <= steps <= total:
        raise OnnxSamplerError(f"The number of steps must be between 1 and {total}, got {steps}.")
    if spacing == "uniform_trailing":
        return np.round(np.arange(total, 0, -total / steps)).astype(np.int64) - 1
    return (np.arange(0, steps) * (total // steps)).round()[::-1].astype(np.int64) + 1


def strength_start(timesteps: np.ndarray, total: int, strength: float) -> int:
    """Index of the first step run for `strength` in (0, 1]: 0 for 1, else the timestep nearest strength x T."""
    if not 0.0 < strength <= 1.0:
        raise OnnxSamplerError(f"The strength must be greater than 0 and at most 1, got {strength}.")
    if strength == 1.0:
        return 0
    return int(np.argmin(np.abs(timesteps.astype(np.float64) - strength * total)))


@dataclass(frozen=True)
class Schedule:
    """DDIM with eta 0 and eps prediction on float32 `alphas_cumprod`, the arithmetic in float32 as refface's."""

    alphas_cumprod: np.ndarray  # float32 [T]
    steps: int

    @property
    def total(self) -> int:
        return len(self.alphas_cumprod)

    def add_noise(self, clean: np.ndarray, noise: np.ndarray, timestep: int) -> np.ndarray:
        alpha = self.alphas_cumprod[timestep]
        return (np.sqrt(alpha) * clean + np.sqrt(np.float32(1) - alpha) * noise).astype(np.float32)

    def step(self, eps: np.ndarray, timestep: int, latents: np.ndarray) -> np.ndarray:
        previous = timestep - self.total // self.steps
        alpha = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else self.alphas_cumprod[0]
        one = np.float32(1)
        x0 = (latents - (one - alpha) ** np.float32(0.5) * eps) / alpha ** np.float32(0.5)
        return (alpha_prev ** np.float32(0.5) * x0 + (one - alpha_prev) ** np.float32(0.5) * eps).astype(np.float32)


def to_model_input(images: np.ndarray | Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 RGB images [H, W, 3] (one, a list or a [B, H, W, 3] array) -> float32 [B, 3, H, W] in [-1, 1]."""
    batch = np.asarray(images)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[1:3] != (size, size):
        raise OnnxSamplerError(f"Images must be RGB arrays of {size}x{size} pixels; got shape {batch.shape}.")
    if batch.dtype != np.uint8:
        raise OnnxSamplerError(f"Images must be 8-bit (uint8) arrays; got {batch.dtype}.")
    return (batch.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(127.5) - np.float32(1)).astype(np.float32)


def to_8bit(decoded: np.ndarray) -> np.ndarray:
    """Decoder output [B, 3, H, W] -> uint8 [B, H, W, 3], truncating as refface (and the official script) do."""
    pixels = np.clip((decoded.astype(np.float32) + np.float32(1)) / np.float32(2), 0, 1)
    return (pixels * np.float32(255)).astype(np.uint8).transpose(0, 2, 3, 1)


class OnnxRestorer:
    """ReF-LDM restoration from an export folder through onnxruntime sessions (one per graph).

    `providers` are onnxruntime's (default: the CPU); `threads` sets each session's intra-op threads.
    """

    def __init__(self, folder: str | Path, providers: Sequence[Any] | None = None, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise OnnxSamplerError("The ONNX sampler needs onnxruntime; pip install onnxruntime.") from None
        self.folder = Path(folder)
        path = self.folder / DESCRIPTION_FILE
        try:
            self.description = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OnnxSamplerError(f"{self.folder} has no {DESCRIPTION_FILE}; is it a refface ONNX export?") from None
        except (OSError, ValueError) as error:
            raise OnnxSamplerError(f"The description {path} is not readable JSON ({error}).") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the optional host-flag inputs draw a warning on every session
        if threads is not None:
            options.intra_op_num_threads = threads
        chosen = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.sessions = {}
        for name, graph in self.description["graphs"].items():
            model = self.folder / graph["file"]
            if not model.is_file():
                raise OnnxSamplerError(f"The export folder {self.folder} lacks {graph['file']}.")
            self.sessions[name] = onnxruntime.InferenceSession(str(model), options, providers=chosen)
        self.layers = self.description["attention_layers"]
        self.kv_names = [name for layer in self.layers for name in (layer["key"], layer["value"])]
        sampling = self.description["sampling"]
        self.alphas_cumprod = np.asarray(sampling["alphas_cumprod"], dtype=np.float32)
        self.image_size = int(self.description["image"]["size"])
        self.latent_size = int(self.description["latent"]["size"])
        unet_inputs = self.description["graphs"]["unet"]["inputs"]
        self._sample_name, self._timestep_name = unet_inputs[0]["name"], unet_inputs[1]["name"]
        # inputs face-swap hosts bind, which change nothing (any value will do)
        flags = self.description.get("host_flags", {})
        self._flags = {name: np.array(flags.get("feed", [True])) for name in flags.get("inputs", [])}
        self._null: dict[str, np.ndarray] | None = None

    # ----------------------------------------------------------------------------- graphs
    def encode(self, images: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] in [-1, 1] -> unquantized latents [B, C, H/f, W/f]."""
        return self.sessions["vq_encoder"].run(None, {"image": images})[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> images in about [-1, 1] (quantized first, inside the graph)."""
        return self.sessions["vq_decoder"].run(None, {"latent": latents.astype(np.float32)})[0]

    def reference_pass(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        """Reference latents [N, C, h, w] -> every layer's keys/values, named as unet.onnx's inputs."""
        outputs = self.sessions["unet_reference"].run(self.kv_names, {"reference_latents": latents})
        return dict(zip(self.kv_names, outputs, strict=True))

    def denoise(self, sample: np.ndarray, timestep: int, keys_values: dict[str, np.ndarray]) -> np.ndarray:
        """One U-Net call: `sample` [B, 2C, h, w], keys/values [B, heads, head_dim, tokens] -> eps [B, C, h, w]."""
        feeds = {self._sample_name: sample, self._timestep_name: np.full(sample.shape[0], timestep, np.int64)}
        feeds.update(keys_values)
        feeds.update(self._flags)
        return self.sessions["unet"].run(None, feeds)[0]

    # ----------------------------------------------------------------------------- references
    def encode_references(self, references: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """uint8 reference images of one person -> the keys/values unet.onnx takes (tokens of all references).

        As in refface and the official code, the references are encoded as one image side by side.
        """
        images = to_model_input(references, self.image_size)
        if len(images) == 0:
            return self.no_references()
        wide = np.concatenate(list(images), axis=-1)[None]
        latent = self.encode(wide)
        per_reference = np.concatenate(np.split(latent, len(images), axis=-1), axis=0)
        return self.reference_pass(per_reference)

    def no_references(self) -> dict[str, np.ndarray]:
        """Keys/values with no tokens: plain self-attention (restoration from the LQ image alone)."""
        return {
            name: np.zeros((1, layer["heads"], layer["head_dim"], 0), np.float32)
            for layer in self.layers
            for name in (layer["key"], layer["value"])
        }

    def null_references(self, count: int) -> dict[str, np.ndarray]:
        """Guidance's null condition for `count` references: an all-zero latent's keys/values, `count` times."""
        if self._null is None:
            channels = int(self.description["latent"]["channels"])
            zero = np.zeros((1, channels, self.latent_size, self.latent_size), np.float32)
            self._null = self.reference_pass(zero)
        return {name: np.tile(value, (1, 1, 1, count)) for name, value in self._null.items()}

    def reference_count(self, keys_values: dict[str, np.ndarray]) -> int:
        first = self.layers[0]
        return keys_values[first["key"]].shape[-1] // int(first["tokens_per_reference"])

    # ----------------------------------------------------------------------------- restoration
    def restore(
        self,
        lq: np.ndarray | Sequence[np.ndarray],
        references: Sequence[np.ndarray] | dict[str, np.ndarray] | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        noise: np.ndarray | None = None,
        strength: float = 1.0,
        spacing: str | None = None,
        return_latents: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Restore uint8 LQ face crops ([H, W, 3], a list, or [B, H, W, 3]) of one person -> uint8 [B, H, W, 3].

        `references`: uint8 images, keys/values from `encode_references` (reuse them across photos), or None.
        `noise` [B, C, h, w] replaces the seeded draw (pass refface's to reproduce its output).
        """
        sampling = self.description["sampling"]
        steps = int(sampling["steps"] if steps is None else steps)
        scale = float(sampling["guidance_scale"] if guidance_scale is None else guidance_scale)
        spacing = spacing or sampling["spacing"]
        schedule = Schedule(self.alphas_cumprod, steps)
        timesteps = ddim_timesteps(schedule.total, steps, spacing)
        start = strength_start(timesteps, schedule.total, strength)

        lq_latents = self.encode(to_model_input(lq, self.image_size))
        batch = lq_latents.shape[0]
        if references is None:
            keys_values = self.no_references()
        elif isinstance(references, dict):
            keys_values = references
        else:
            keys_values = self.encode_references(references)
        count = self.reference_count(keys_values)

        if noise is None:
            noise = np.random.default_rng(seed).standard_normal(lq_latents.shape, dtype=np.float32)
        elif noise.shape != lq_latents.shape:
            raise OnnxSamplerError(f"The noise must have shape {lq_latents.shape}; got {noise.shape}.")
        latents = noise.astype(np.float32)
        if start:
            latents = schedule.add_noise(lq_latents, latents, int(timesteps[start]))

        guided = count > 0 and scale != 1.0
        if guided:  # one call for both branches, in refface's order [null, references]
            null = self.null_references(count)
            context = {
                name: np.concatenate([np.repeat(null[name], batch, 0), np.repeat(keys_values[name], batch, 0)])
                for name in self.kv_names
            }
            conditioning = np.concatenate([lq_latents, lq_latents])
        else:
            context = {name: np.repeat(keys_values[name], batch, 0) for name in self.kv_names}
            conditioning = lq_latents
        for t in timesteps[start:]:
            model_input = np.concatenate([np.concatenate([latents] * (2 if guided else 1)), conditioning], axis=1)
            eps = self.denoise(model_input, int(t), context)
            if guided:
                eps_null, eps_ref = eps[:batch], eps[batch:]
                eps = eps_null + np.float32(scale) * (eps_ref - eps_null)
            latents = schedule.step(eps, int(t), latents)
        images = to_8bit(self.decode(latents))
        return (images, latents) if return_latents else images


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: restore one LQ face crop with reference crops (all of the model's size) into a PNG."""
    import argparse

    parser = argparse.ArgumentParser(description="ReF-LDM restoration with onnxruntime (no PyTorch).")
    parser.add_argument("folder", help="a folder written by `refface export onnx`")
    parser.add_argument("lq", help="the LQ face crop")
    parser.add_argument("refs", nargs="*", help="reference face crops of the same person")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from PIL import Image
    except ImportError:
        print("onnx_sampler: error: reading and writing image files needs Pillow.", file=sys.stderr)
        return 1
    try:
        restorer = OnnxRestorer(args.folder)
        size = restorer.image_size

        def load(path: str) -> np.ndarray:
            image = Image.open(path).convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(image)

        result = restorer.restore(
            load(args.lq),
            [load(p) for p in args.refs] or None,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            strength=args.strength,
        )
    except (OnnxSamplerError, OSError) as error:
        print(f"onnx_sampler: error: {error}", file=sys.stderr)
        return 1
    Image.fromarray(result[0]).save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
