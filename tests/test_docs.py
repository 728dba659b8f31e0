"""The docs name real config keys: every `data.*`, `model.*`, `trainer.*` and `callbacks.*` key written
in the README or the configuration reference exists in the composed config (a renamed key fails here)."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_train
from sgns import cli
from sgns.train import train

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"(?<![\w.$/])((?:data|model|trainer|callbacks)\.[a-z_]+(?:\.[a-z_]+)*)")


@pytest.mark.parametrize("page", ["README.md", "docs/configuration.md", "docs/fidelity.md", "docs/reliability.md"])
def test_every_key_the_docs_name_exists(tmp_path, page):
    configs = [compose_train(tmp_path, ["data=text_file", "data.path=x", *choice])
               for choice in (["model=skipgram"], ["model=cbow"], ["model=fasttext"], ["model/optimizer=sparse_adam"], ["trainer=ddp"])]  # fmt: skip
    text = (ROOT / page).read_text()
    keys = set(KEY.findall(text))
    group = None  # the reference's tables: a section per group, its keys in the first column
    for line in text.splitlines():
        if line.startswith("## "):
            named = re.match(r"## `(data|model|trainer|callbacks)`", line)
            group = named.group(1) if named else None
        elif group and line.startswith("| `"):
            keys |= {f"{group}.{k}" for k in re.findall(r"`([a-z_.]+)`", line.split("|")[1])}
    assert keys, page
    missing = [k for k in sorted(keys) if not any(OmegaConf.select(c, k, default="<missing>") != "<missing>" for c in configs)]
    assert not missing, missing


def test_the_readme_stays_short_and_names_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """What the quick start trains (the embedded corpus, its vocabulary), one epoch of it."""
    root = tmp_path_factory.mktemp("quick_start")
    train(compose_train(root / "run", ["trainer.max_epochs=1", "logger=none", "probe_words=[]"]))
    train(compose_train(root / "fasttext", ["model=fasttext", "model.net.buckets=100000", "trainer.max_epochs=1", "logger=none",
                                            "probe_words=[]"]))  # fmt: skip
    return root


def test_the_readmes_sgns_examples_work_on_the_quick_start_vectors(quick_start, tmp_path, capsys):
    """`sgns similarity … cat dog` and `doesnt-match breakfast …` failed: those words are not in
    the embedded corpus's vocabulary."""
    readme = (ROOT / "README.md").read_text()
    examples = [line.split("#")[0].split() for line in readme.splitlines() if line.startswith("sgns ")]
    assert len(examples) >= 6
    files = {"last.ckpt": quick_start / "run" / "last.ckpt", "vectors.bin": quick_start / "run" / "vectors.bin",
             "fasttext.bin": quick_start / "fasttext" / "fasttext.bin"}  # fmt: skip
    for example in examples:
        args = [str(files.get(Path(a).name, tmp_path / a)) if a.endswith((".ckpt", ".bin", ".txt", ".json")) else a for a in example[1:]]
        assert cli.main(args) == 0, (example, capsys.readouterr().err)
