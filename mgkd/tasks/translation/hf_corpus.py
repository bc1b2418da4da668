"""Parallel text from Hugging Face `datasets`: a dataset in the local cache, or a save_to_disk folder.

Nothing here reaches the network. A dataset by name is read the way `datasets`
itself reads one offline (its `cache` builder, over the folder
`<cache>/<namespace>___<name>/<config>/<version>/<hash>/`), so a run behaves the
same on a machine with and without a connection; a dataset that is not there
is an error saying how to put it there. Pairs come from the `translation`
column (a dict keyed by language code, the Hub's translation datasets) or from
two named text columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgkd.config import CorpusConfig
from mgkd.errors import MgkdError
from mgkd.tasks.translation.corpus import Pair

DATASETS_HINT = "pip install datasets"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MgkdError(f"corpus.kind 'hf' reads Hugging Face datasets with `datasets`: {DATASETS_HINT}") from None
    return datasets


def cache_folder(cache_dir: Path | None) -> Path:
    """The `datasets` cache folder a name is looked up in: the configured one, else HF_DATASETS_CACHE's."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(str(_datasets().config.HF_DATASETS_CACHE)).expanduser()


def _not_cached(name: str, config: str | None, folder: Path, why: str) -> MgkdError:
    args = f"{name!r}" + (f", {config!r}" if config else "")
    return MgkdError(
        f"the Hugging Face dataset {name}{'/' + config if config else ''} is not in the local datasets cache "
        f"{folder} ({why}); mgkd reads it offline. Put it there once on a machine with a connection: python -c "
        f'"import datasets; datasets.load_dataset({args})" (then copy the cache folder, and set corpus.hf_cache_dir '
        "or HF_DATASETS_CACHE to it), or save it with Dataset.save_to_disk(FOLDER) and set corpus.path=FOLDER"
    )


def load_cached(name: str, split: str, cache_dir: Path | None) -> Any:
    """Split `split` of the dataset NAME[/CONFIG] as it lies in the local cache (no network)."""
    datasets = _datasets()
    from datasets.packaged_modules.cache.cache import Cache

    repo, config = name, None
    # NAME, NAMESPACE/NAME, NAME/CONFIG and NAMESPACE/NAME/CONFIG: a namespace is a cache folder's prefix.
    parts = name.split("/")
    folder = cache_folder(cache_dir)
    if len(parts) == 3:
        repo, config = "/".join(parts[:2]), parts[2]
    elif len(parts) == 2 and not (folder / "___".join(parts)).is_dir():
        repo, config = parts[0], parts[1]
    try:
        builder = Cache(cache_dir=str(folder), dataset_name=repo.split("/")[-1], repo_id=repo,
                        config_name=config, version="auto", hash="auto")  # fmt: skip
    except (ValueError, FileNotFoundError, OSError) as e:
        raise _not_cached(repo, config, folder, str(e).replace("\n", " ")) from None
    available = list(builder.info.splits or {})
    if split not in available:
        raise MgkdError(
            f"the cached dataset {name} has splits {', '.join(available) or '(none)'}, not {split!r}; "
            "set corpus.hf_split (or the eval set's split) to one of them"
        )
    try:
        return builder.as_dataset(split=split)
    except (datasets.exceptions.DatasetsError, FileNotFoundError, OSError) as e:
        raise _not_cached(repo, config, folder, f"its files are incomplete: {e}") from None


def load_disk(path: Path, split: str | None, where: str) -> Any:
    """A save_to_disk folder: its Dataset (which has no split names: `split` is not needed), or one split of
    its DatasetDict."""
    datasets = _datasets()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MgkdError(f"{where}: {folder} is not a folder; give a folder written by save_to_disk")
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise MgkdError(
            f"{where}: {folder} is not a dataset folder written by save_to_disk ({str(e).splitlines()[0][:200]})"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise MgkdError(
                f"{where}: {folder} holds splits {', '.join(loaded)}; choose one with "
                f"{'corpus.hf_split' if where == 'corpus.path' else 'split'} (got {split!r})"
            )
        return loaded[split]
    return loaded


def dataset_pairs(ds: Any, cfg: CorpusConfig, label: str, where: str) -> list[Pair]:
    """The (source, target) pairs of one split; ids are `label:row`."""
    columns = list(ds.column_names)
    if cfg.source_column is not None:
        assert cfg.target_column is not None
        missing = [c for c in (cfg.source_column, cfg.target_column) if c not in columns]
        if missing:
            raise MgkdError(
                f"{where}: {label} has no column {missing[0]!r}; its columns are {', '.join(columns)} "
                "(corpus.source_column / corpus.target_column)"
            )
        sources, targets = ds[cfg.source_column], ds[cfg.target_column]
    else:
        if "translation" not in columns:
            raise MgkdError(
                f"{where}: {label} has no `translation` column (columns: {', '.join(columns)}); name the two text "
                "columns with corpus.source_column and corpus.target_column"
            )
        rows = ds["translation"]
        present = sorted({k for r in rows[:100] if isinstance(r, dict) for k in r})
        for lang, key in ((cfg.source_lang, "source_lang"), (cfg.target_lang, "target_lang")):
            if lang not in present:
                raise MgkdError(
                    f"{where}: the `translation` column of {label} has no language {lang!r} (corpus.{key}); "
                    f"the codes present are {', '.join(present) or '(none)'}"
                )
        sources = [r.get(cfg.source_lang) if r else None for r in rows]
        targets = [r.get(cfg.target_lang) if r else None for r in rows]
    pairs = []
    for i, (s, t) in enumerate(zip(sources, targets)):
        s, t = (s or "").strip(), (t or "").strip()
        if s or t:  # an empty row is a gap in the data, not a pair
            pairs.append(Pair(f"{label}:{i}", " ".join(s.split()), " ".join(t.split())))
    return pairs


def read_hf_corpus(cfg: CorpusConfig) -> list[Pair]:
    """The pairs of `corpus.kind: hf`: every split of corpus.hf_split, in order."""
    splits = [cfg.hf_split] if isinstance(cfg.hf_split, str) else list(cfg.hf_split)
    pairs: list[Pair] = []
    for split in splits:
        pairs += read_hf_split(cfg, split, "corpus")
    if not pairs:
        raise MgkdError(f"the hf corpus ({cfg.name or cfg.path}, splits {splits}) holds no sentence pair")
    return pairs


def read_hf_split(cfg: CorpusConfig, split: str, where: str, name: str | None = None,
                  path: Path | None = None) -> list[Pair]:  # fmt: skip
    """One split of an hf dataset: of `name`/`path` when given, else of the corpus's own dataset."""
    if name is None and path is None:
        name, path = cfg.name, cfg.path
    if name is not None:
        ds = load_cached(name, split, cfg.hf_cache_dir)
        label = f"hf:{name}:{split}"
    else:
        assert path is not None
        ds = load_disk(path, split, "corpus.path" if where == "corpus" else where)
        label = f"disk:{Path(path).name}:{split}"
    return dataset_pairs(ds, cfg, label, where)
