"""The `bertrs` command: one sub-command per pipeline stage (each defined in its own module here).

    bertrs prepare | generate | finetune | embed | cache info | train | evaluate | recommend
"""

from __future__ import annotations

import typer

from stages import generate, prepare

app = typer.Typer(
    name="bertrs",
    help="BERT-RS: review-aware recommendation. Each command is one DVC stage; see dvc.yaml and README.md.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.main)
app.command("generate")(generate.main)

if __name__ == "__main__":
    app()
