"""The console's static files: two catalogs with the same keys, every message the scripts ask for
present, every module they import present, and every file shipped in the package."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from qfserve.console import STATIC_DIR

ROOT = Path(__file__).resolve().parents[3]
CATALOGS = ("en", "zh-CN")
# Keys built at run time (t(`usage.by.${group}`)) are checked by their prefix.
BUILT = re.compile(r"\bt\(`([\w.-]+)\.\$\{")
IMPORT = re.compile(r'(?:from\s+|import\()\s*"(\.{1,2}/[^"]+)"')


def catalog(language: str) -> dict[str, str]:
    loaded: dict[str, str] = json.loads((STATIC_DIR / "i18n" / f"{language}.json").read_text())
    return loaded


def scripts() -> list[Path]:
    return sorted((STATIC_DIR / "js").rglob("*.js"))


def test_both_catalogs_have_the_same_keys() -> None:
    english, chinese = (set(catalog(lang)) for lang in CATALOGS)
    assert english - chinese == set(), "missing in zh-CN.json"
    assert chinese - english == set(), "missing in en.json"


def test_no_message_is_empty_or_left_untranslated() -> None:
    english, chinese = catalog("en"), catalog("zh-CN")
    for key, text in english.items():
        assert text.strip() and chinese[key].strip(), key
    # Names (language names, key kinds with their wire prefixes) may be the same in both.
    same = {k for k in english if english[k] == chinese[k]}
    assert same <= {"language.zh-CN", "language.en", "keys.kind.iam_key"}, same


def test_placeholders_match_between_catalogs() -> None:
    english, chinese = catalog("en"), catalog("zh-CN")
    for key, text in english.items():
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", chinese[key])), key


def test_every_message_the_scripts_use_is_in_the_catalogs() -> None:
    keys = set(catalog("en"))
    # Every string literal in a catalog's namespace ("apps.create"), wherever it reaches t().
    namespaces = "|".join(sorted({key.split(".")[0] for key in keys}))
    message = re.compile(rf'"((?:{namespaces})\.[\w.-]+)"')
    used: set[str] = set()
    prefixes: set[str] = set()
    for script in scripts():
        text = script.read_text()
        used |= set(message.findall(text))
        prefixes |= set(BUILT.findall(text))
    assert used, "no messages found: the pattern is wrong"
    assert used - keys == set()
    for prefix in prefixes:
        assert any(k.startswith(prefix + ".") for k in keys), prefix


def test_every_imported_module_exists() -> None:
    for script in scripts():
        for target in IMPORT.findall(script.read_text()):
            assert (script.parent / target).resolve().is_file(), f"{script.name} imports {target}"


def test_every_static_file_is_package_data() -> None:
    """As setuptools finds package data: each pattern globbed from the package's folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["qfserve"]
    package = STATIC_DIR.parents[1]
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert files
    assert files - shipped == set()


def test_the_console_stays_small() -> None:
    """Every page, script, catalog and style together: a budget, so that a library or a picture
    added by accident is noticed."""
    total = sum(p.stat().st_size for p in STATIC_DIR.rglob("*") if p.is_file())
    assert total < 120_000, f"{total} bytes"
