"""The `bertrs` command: one sub-command per pipeline stage (each defined in its own module here).

    bertrs prepare | generate | finetune | embed | cache info | gram | train | evaluate | recommend | serve
"""

from __future__ import annotations

import typer

from stages import embed, evaluate, finetune, generate, gram, prepare, recommend, serve, train

app = typer.Typer(
    name="bertrs",
    help="BERT-RS: review-aware recommendation. Each command is one DVC stage; see dvc.yaml and README.md.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.main)
app.command("generate")(generate.main)
app.command("finetune")(finetune.main)
app.command("embed")(embed.main)
app.command("gram")(gram.main)
app.command("train")(train.main)
app.command("evaluate")(evaluate.main)
app.command("recommend")(recommend.main)
app.command("serve")(serve.main)

cache_app = typer.Typer(help="Inspect embedding caches.", no_args_is_help=True)
cache_app.command("info")(embed.cache_info)
app.add_typer(cache_app, name="cache")

if __name__ == "__main__":
    app()
