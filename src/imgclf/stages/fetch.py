"""fetch: bring a data set into data/<name>/images/<class>/... (the layout every later stage reads)."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from imgclf.files import atomic_dir
from imgclf.options import Options
from imgclf.paths import Paths
from imgclf.stages._app import stage_main

log = logging.getLogger(__name__)


def fetch(cfg: DictConfig | Options) -> None:
    opts = cfg if isinstance(cfg, Options) else Options.from_config(cfg)
    out = Paths.from_config(opts.paths).images(opts.data.name)
    # a partial, called here: errors reach the user as they are, not wrapped by Hydra
    fetcher = instantiate(opts.data.fetch, _partial_=True, _convert_="all")
    with atomic_dir(out) as tmp:  # a failed fetch leaves the previous images in place
        fetcher(out_dir=tmp)
    log.info("fetched %s into %s", opts.data.name, out)


main = stage_main(fetch)

if __name__ == "__main__":
    main()
