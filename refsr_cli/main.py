"""The ``refsr`` command group: global options, error reporting, subcommand registry."""

from __future__ import annotations

import sys

import click

import refsr

# subcommand name -> "module:function" (imported lazily so `refsr --help` stays fast)
SUBCOMMANDS = {
    "degrade": "refsr_cli.degrade:degrade",
    "index-refs": "refsr_cli.index_refs:index_refs",
    "match": "refsr_cli.match:match",
    "train": "refsr_cli.train:train",
    "sample": "refsr_cli.sample:sample",
    "evaluate": "refsr_cli.evaluate:evaluate",
    "demo": "refsr_cli.demo:demo",
}

SHORT_HELP = {
    "degrade": "Make HR/LR training and test pairs (Real-ESRGAN degradations).",
    "index-refs": "Embed reference photos with OpenCLIP into an hnswlib index.",
    "match": "Find the best reference fragments for each target (CLIP, then patch matcher).",
    "train": "Train the VQ autoencoder, the diffusion denoiser or the patch matcher.",
    "sample": "Restore LR images (with references) into HR images.",
    "evaluate": "PSNR, SSIM, LPIPS, CLIP-IQA and FID of outputs against ground truth.",
    "demo": "Run the whole chain on bundled photos with the shipped model.",
}


class RefsrGroup(click.Group):
    """A click group that loads subcommands lazily and turns errors into one line."""

    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        import importlib

        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, SHORT_HELP[name]) for name in SUBCOMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx, args):
        from .common import hoist_global_flags

        name = next((a for a in args if not a.startswith("-")), None)
        command = self.get_command(ctx, name) if name else None
        return super().parse_args(ctx, hoist_global_flags(args, command))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("refsr: interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # one line for the user; the traceback with -v
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            name = ctx.invoked_subcommand or "refsr"
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if type(e).__module__ not in ("refsr.errors",) and not isinstance(e, (OSError, ValueError)):
                message = f"{type(e).__name__}: {message}"
            click.echo(f"refsr {name}: error: {message}", err=True)
            sys.exit(1)


@click.group(cls=RefsrGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(refsr.__version__, "--version", prog_name="refsr")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and full tracebacks on errors (also after the subcommand).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no info logs (also after the subcommand).")
@click.pass_context
def cli(ctx, verbose, quiet):
    """refsr: restore degraded images with a latent diffusion model guided by reference images.

    Each subcommand reads and writes plain files, so stages chain in shell pipelines and
    job scripts:

    \b
      refsr degrade photos/ -o pairs/                      # HR/LR pairs + manifest.jsonl
      refsr index-refs refs/ --index refs.index/           # OpenCLIP + hnswlib index
      refsr match pairs/manifest.jsonl --index refs.index/ -o matches.jsonl
      refsr train diffusion pairs/manifest.jsonl --matches matches.jsonl --vqvae runs/vq ...
      refsr sample --model runs/x/model lr/ --matches matches.jsonl -o out/
      refsr evaluate --pred out/ --gt pairs/hr/ -o report.json

    Run `refsr COMMAND --help` for what each command reads and writes.
    """
    from .common import set_verbosity

    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet
    set_verbosity(verbose, quiet)


def main():
    cli(prog_name="refsr")


if __name__ == "__main__":
    main()
