"""mkdocs hook: the docs link images that live beside the benchmarks that make them (`../eval/...`,
a link that also works on GitHub); copy each such file into the site so the link resolves there too."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

LINK = re.compile(r"\]\((\.\./[^)\s#]+)\)")


def on_files(files: Files, config) -> Files:
    docs = Path(config["docs_dir"])
    repo = docs.parent.resolve()
    wanted = {m for page in docs.glob("*.md") for m in LINK.findall(page.read_text(encoding="utf-8"))}
    for link in sorted(wanted):
        target = (docs / link).resolve()
        if target.suffix == ".md" or not target.is_file() or repo not in target.parents:
            continue  # a page outside docs/, or nothing there: mkdocs --strict reports the link
        files.append(
            File(
                link,
                str(docs),
                config["site_dir"],
                config["use_directory_urls"],
                dest_uri="repo/" + target.relative_to(repo).as_posix(),
                inclusion=InclusionLevel.INCLUDED,
            )
        )  # not hidden as a dotted path
    return files
