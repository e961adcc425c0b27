"""Command line: `python -m jaxdiff.convert diffusers-unet SRC DST`.

Converts the diffusers UNet2DModel folder SRC into DST (unet_config.json + an Orbax checkpoint of the
parameters), readable with `jaxdiff.convert.load_converted_unet(DST)`.
"""

from __future__ import annotations

import argparse
import sys

from jaxdiff.convert.diffusers_unet import convert_diffusers_unet


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxdiff.convert", description=__doc__.splitlines()[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  unet = commands.add_parser("diffusers-unet", help="convert a diffusers UNet2DModel folder")
  unet.add_argument("src", help="folder with config.json and diffusion_pytorch_model.safetensors")
  unet.add_argument("dst", help="new output folder")
  args = parser.parse_args(argv)
  try:
    convert_diffusers_unet(args.src, args.dst)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
