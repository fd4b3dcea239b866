"""The README's first screen and configuration table stay true to the code."""

import re
from pathlib import Path

from wardrobe.config import documented_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_two_commands_come_first():
    top = README[:600]
    assert "make run" in top and "make test" in top


def test_every_setting_is_documented():
    missing = [name for name, _ in documented_settings() if f"`{name}`" not in README]
    assert not missing, f"settings missing from the README table: {missing}"


def test_every_make_target_named_in_the_readme_exists():
    included = [*(ROOT / "bench").glob("*.mk"), *(ROOT / "scripts" / "fleet").glob("*.mk")]
    makefiles = "".join(p.read_text() for p in [ROOT / "Makefile", *included])

    for target in set(re.findall(r"`make ([a-z-]+)", README)):
        assert re.search(rf"^{target}:", makefiles, re.M), (
            f"make {target} is named in the README but undefined"
        )
