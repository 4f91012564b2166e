"""The real DVC DAG on a tiny configuration: a temporary git repo with this project's dvc.yaml, stages and library,
a tiny local BERT and a small generated dataset.

Specifies that `dvc repro` builds every output, that a second run does nothing, that a change reruns exactly the
stages that read it (a shared train setting: every run; one model's setting: that model's runs; one encoder: its
stages and the runs that read its cache; the code of one stage family's settings: that family's stages), and that
swapping a run's embedding cache changes the table's cache column and its metrics. Every test starts from the same
reproduced state, whatever ran before it. Without DVC: every project module a stage's command imports is one of the
stage's deps, so a code change cannot leave an output stale.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.synthetic import SyntheticSpec, write_synthetic
from pipeline.data.prepared import load_prepared
from pipeline.embeddings.cache import load_profiles
from pipeline.ranking.evaluation.evaluate import evaluate
from pipeline.ranking.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# the settings module of each stage family; a stage loads the others only to validate params.yaml, so they are not
# its deps (a new model setting must not re-run the encoders)
SETTINGS_MODULES = {"prepare": "data", "finetune": "text", "embed": "text", "embed_shared": "text",
                    "gram": "ranking", "train": "ranking", "train_text": "ranking", "evaluate": "ranking"}


def dvc(repo: Path, *args: str, stdout_only: bool = False) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout if stdout_only else done.stdout + done.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_param(repo: Path, dotted: str, value) -> None:
    params = json.loads(json.dumps(yaml.safe_load((repo / "params.yaml").read_text())))  # YAML aliases unshared
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def dag_repo(tmp_path_factory, tiny_encoder_master) -> Path:
    repo = tmp_path_factory.mktemp("dag") / "repo"
    repo.mkdir()
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    write_synthetic(repo / "data" / "raw" / "reviews.json.gz", SyntheticSpec(n_users=40, n_items=25, seed=5))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"].update(input="data/raw", min_user_reviews=3, min_item_reviews=2, eval_negatives=10)
    tiny = str(tiny_encoder_master)
    params["encoders"] = {"tiny": {"model": tiny, "finetune": False},
                          "tiny_ft": {"model": tiny, "finetune": True}}
    params["finetune"].update(max_steps=3, batch_size=4, max_length=32, max_eval_pairs=8, save_steps=1,
                              learning_rate=5e-3)  # large enough that the tuned encoder really differs
    params["embed"].update(max_length=32, batch_size=16, shard_size=32, shared_passes={},
                           single_passes=["tiny", "tiny_ft"])
    params["runs"] = {"pop": {"model": "pop"}, "neumf": {"model": "neumf"}}
    # text alone: with a random tiny BERT, only a text-only model is sure to rank differently
    params["text_runs"] = {"text": {"model": "semantic_only", "embeddings": "tiny"},
                           "text_ft": {"model": "semantic_only", "embeddings": "tiny_ft"}}
    params["train"].update(device="cpu")
    params = json.loads(json.dumps(params))  # YAML aliases unshared: each model's section stands alone
    for name in ("neumf", "semantic_only"):
        params["models"][name].update(epochs=2, factors=8, mlp_layers=[16, 8], batch_size=64)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(command, cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    return repo


@pytest.fixture(scope="module")
def first_repro(dag_repo) -> str:
    output = dvc(dag_repo, "repro")
    (dag_repo / "params.built.yaml").write_text((dag_repo / "params.yaml").read_text())
    return output


@pytest.fixture
def built(dag_repo, first_repro) -> Path:
    """The repo as the first repro left it: params restored and reproduced, so no test sees another's changes."""
    (dag_repo / "params.yaml").write_text((dag_repo / "params.built.yaml").read_text())
    dvc(dag_repo, "repro")
    return dag_repo


def test_repro_builds_every_stage_and_valid_outputs(dag_repo, first_repro):
    assert ran(first_repro) == {"prepare", "finetune@tiny", "finetune@tiny_ft", "embed@tiny", "embed@tiny_ft", "gram",
                                "train@pop", "train@neumf", "train_text@text", "train_text@text_ft", "evaluate"}
    data = load_prepared(dag_repo / "data" / "prepared")
    for name in ("tiny", "tiny_ft"):
        profiles = load_profiles(dag_repo / "data" / "embeddings" / name, data_fingerprint=data.fingerprint,
                                 n_users=data.n_users, n_items=data.n_items)
        assert profiles.dim == 32
    finetuned = json.loads((dag_repo / "metrics" / "finetune" / "tiny_ft.json").read_text())
    assert finetuned["finetuned"] is True and "nsp_accuracy" in finetuned["after"]
    metrics = json.loads((dag_repo / "metrics.json").read_text())
    assert set(metrics) == {"pop", "neumf", "text", "text_ft"}
    for run in metrics:  # the reported numbers are the trained checkpoints' test metrics, recomputed here
        model = load_checkpoint(dag_repo / "data" / "models" / run, data,
                                cache_path=dag_repo / metrics[run]["cache"] if metrics[run]["cache"] else None).model
        expected = evaluate(model, data, "test", ks=[10], protocols=["full"])["full"]
        assert metrics[run]["full"]["ndcg@10"] == pytest.approx(expected["ndcg@10"]), run
        assert metrics[run]["full"]["n"] == len(data.test)
    assert (dag_repo / "metrics" / "curves" / "neumf.csv").is_file()
    assert "data/embeddings/tiny" in (dag_repo / "reports" / "comparison.md").read_text()
    assert "Data and pipelines are up to date" in dvc(dag_repo, "status")


def test_a_second_repro_does_nothing(built):
    assert ran(dvc(built, "repro")) == set()


def test_rerunning_the_fine_tune_on_the_same_inputs_writes_the_same_bytes_metrics_included(built):
    """A fresh clone's `dvc repro` must leave `git status` clean: no clock reading or path may reach an output."""
    lock = (built / "dvc.lock").read_text()
    metrics = (built / "metrics" / "finetune" / "tiny_ft.json").read_text()
    assert ran(dvc(built, "repro", "--force", "--single-item", "finetune@tiny_ft")) == {"finetune@tiny_ft"}
    assert (built / "metrics" / "finetune" / "tiny_ft.json").read_text() == metrics
    assert (built / "dvc.lock").read_text() == lock


def test_a_shared_train_setting_reruns_every_run_and_nothing_upstream(built):
    set_param(built, "train.seed", 7)
    assert ran(dvc(built, "repro")) == {"train@pop", "train@neumf", "train_text@text", "train_text@text_ft",
                                        "evaluate"}


def test_a_neumf_setting_reruns_only_neumf_and_evaluate(built):
    set_param(built, "models.neumf.epochs", 3)
    assert ran(dvc(built, "repro")) == {"train@neumf", "evaluate"}


def test_an_encoder_setting_reruns_its_stages_the_runs_that_read_it_and_evaluate(built):
    set_param(built, "encoders.tiny.pooling", "cls")
    assert ran(dvc(built, "repro")) == {"finetune@tiny", "embed@tiny", "train_text@text", "evaluate"}


def test_swapping_the_cache_changes_the_table_and_the_metrics(built):
    before = json.loads((built / "metrics.json").read_text())["text"]
    set_param(built, "text_runs.text.embeddings", "tiny_ft")
    assert ran(dvc(built, "repro")) == {"train_text@text", "evaluate"}
    after = json.loads((built / "metrics.json").read_text())["text"]
    assert before["cache"].endswith("data/embeddings/tiny") and after["cache"].endswith("data/embeddings/tiny_ft")
    assert before["cache_fingerprint"] != after["cache_fingerprint"]
    assert before["full"] != after["full"] or before["sampled"] != after["sampled"]
    assert "data/embeddings/tiny_ft" in (built / "reports" / "comparison.md").read_text()


def test_a_change_to_one_stage_familys_settings_code_leaves_the_other_stages_up_to_date(built):
    """Fine-tuning and encoding take hours at the paper's size: editing the ranking settings' module must not
    invalidate them, and editing the encoders' settings module must not invalidate a model that reads no text."""
    for module, expected in (("ranking", {"gram", "train@pop", "train@neumf", "train_text@text", "train_text@text_ft",
                                          "evaluate"}),
                             ("text", {"finetune@tiny", "finetune@tiny_ft", "embed@tiny", "embed@tiny_ft"}),
                             ("data", {"prepare"})):
        path = built / "pipeline" / "config" / f"{module}.py"
        source = path.read_text()
        try:
            path.write_text(source + "\n# an edit\n")
            changed = json.loads(dvc(built, "status", "--json", stdout_only=True))
        finally:
            path.write_text(source)
        assert set(changed) == expected, module  # `dvc status` lists the stages whose own deps changed


CONFIG = REPO / "pipeline" / "config"


def _settings_defined_in() -> dict[str, Path]:
    """Each name pipeline.config exports -> the module of pipeline/config/ that defines it."""
    where = {}
    for module in CONFIG.glob("*.py"):
        if module.name == "__init__.py":
            continue
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                where[node.name] = module
            elif isinstance(node, ast.Assign):
                where.update({target.id: module for target in node.targets if isinstance(target, ast.Name)})
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                where[node.target.id] = module
    return where


def _project_modules_imported(path: Path) -> tuple[set[Path], set[Path]]:
    """Every pipeline/ and stages/ file `path` imports, directly or through another, read from the source (an
    import inside a function counts: it runs when the function does); and the settings modules whose names those
    files outside pipeline/config/ import (`from pipeline.config import EmbedConfig` reads text.py)."""
    defined_in = _settings_defined_in()
    seen, settings_read, todo = set(), set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        package = current.parent.relative_to(REPO).parts
        for node in ast.walk(ast.parse(current.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module if not node.level else ".".join(
                    package[:len(package) - node.level + 1] + ((node.module,) if node.module else ()))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                if base == "pipeline.config" and CONFIG not in current.parents:
                    settings_read |= {defined_in[alias.name] for alias in node.names}
            else:
                continue
            for name in names:
                parts = name.split(".")
                for end in range(1, len(parts) + 1):
                    candidate = REPO.joinpath(*parts[:end])
                    for file in (candidate / "__init__.py", candidate.with_suffix(".py")):
                        if parts[0] in ("pipeline", "stages") and file.is_file():
                            todo.append(file)
    return seen, settings_read


def _only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


@pytest.mark.parametrize("stage", sorted(SETTINGS_MODULES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    """`bertrs <command>` runs stages/<command>.py (stages/cli.py only dispatches to it). The settings modules of
    the other stage families come in through pipeline.config's validation of the whole file: they are not deps,
    and no module the stage runs may read a setting from them."""
    body = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    body = body.get("do", body)
    deps = {REPO / dep for dep in body["deps"] if dep.startswith(("pipeline", "stages"))}
    command = body["cmd"].split()[1]
    own = CONFIG / f"{SETTINGS_MODULES[stage]}.py"
    others = {CONFIG / f"{family}.py" for family in SETTINGS_MODULES.values()} - {own}
    imported, settings_read = _project_modules_imported(REPO / "stages" / f"{command}.py")
    not_deps = {file for file in (imported - others) | settings_read
                if not any(file == dep or dep in file.parents for dep in deps) and not _only_a_docstring(file)}
    assert not not_deps, f"{stage} imports {sorted(str(f.relative_to(REPO)) for f in not_deps)}, not among its deps"
    assert own in deps and not deps & others, stage


def test_bytecode_python_writes_beside_the_sources_is_no_stage_dependency():
    """A checkout that has run the tests holds __pycache__ folders inside the code folders the stages depend on;
    counted, they would give dvc.lock another hash than a fresh clone's `make repro` writes."""
    from dvc.repo import Repo

    ignore = Repo(str(REPO)).dvcignore
    assert ignore.is_ignored_dir(str(REPO / "pipeline" / "ranking" / "__pycache__"))
    assert ignore.is_ignored_file(str(REPO / "pipeline" / "ranking" / "stray.cpython-311.pyc"))
    assert not ignore.is_ignored_file(str(REPO / "pipeline" / "ranking" / "registry.py"))
