"""fetch: bring a data set into data/<name>/images/<class>/... (the layout every later stage reads)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from imgclf.errors import BadInput
from imgclf.files import atomic_dir
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import stage_main
from imgclf.targets import remove_empty

log = logging.getLogger(__name__)

# the data.fetch keys naming folders a source writes besides the images (downloads, dogs_vs_cats' test1 set)
SOURCE_FOLDERS = ("download_dir", "predict_dir")


def fetch(cfg: DictConfig | Options) -> None:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    paths = Paths.from_config(opts.paths)
    out, predict = paths.images(opts.data.name), paths.predict(opts.data.name)
    if (predict.exists() or predict.is_symlink()) and not predict.is_dir():
        raise BadInput(f"{predict} is not a folder; fetch writes the unlabelled images there: move it away")
    # a partial, called here: errors reach the user as they are, not wrapped by Hydra
    fetcher = instantiate(opts.data.fetch, _partial_=True, _convert_="all")
    written = [out, *(Path(opts.data.fetch[key]) for key in SOURCE_FOLDERS if opts.data.fetch.get(key))]
    with new_folders_taken_back(written), atomic_dir(out) as tmp:  # a failed fetch leaves the previous images
        fetcher(out_dir=tmp)
    predict.mkdir(exist_ok=True)  # dvc.yaml's output for every data set: empty where the source has no such images
    log.info("fetched %s into %s", opts.data.name, out)


@contextmanager
def new_folders_taken_back(paths: Iterable[Path]) -> Iterator[None]:
    """The folders on the way to `paths` that are not there yet are removed again, deepest first, when the fetch
    fails and they are empty: a refused first fetch leaves no empty data/<name>/downloads/ behind. A folder that
    was there before, or that holds something (a verified download, kept for the next fetch), stays."""
    new = {p for path in paths for p in (path, *path.parents) if not (p.exists() or p.is_symlink())}
    try:
        yield
    except BaseException:
        remove_empty(new)
        raise


main = stage_main(fetch)

if __name__ == "__main__":
    main()
