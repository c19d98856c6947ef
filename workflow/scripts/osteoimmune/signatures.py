"""The gene-signature library: build it from the curated source, load, query and export it.

The curated source (``signatures.yaml`` of the shared reference folder) lists each set with its
genes per species, its sources and the evidence behind it. The project's own sets (programs the
source reviews name that the curated source lacks) are in ``osteoimmune/data/
signatures_project.yaml``, in the same format. :func:`build_library` merges both into the
project's library (``osteoimmune/data/signatures.yaml``), keyed by set name, with every source
resolved to a full citation; :func:`load_library` reads and validates that library.

Run ``python -m osteoimmune.signatures build SOURCE OUT`` to rebuild the packaged library (the
project file is merged by default; ``--project FILE`` names another one).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from osteoimmune.errors import SignatureError

LIBRARY_SCHEMA_VERSION = 1
SPECIES = ("human", "mouse")
USES = ("score", "annotation", "per_gene", "enrichment_reference", "reference_only")
DEFAULT_LIBRARY = Path(__file__).parent / "data" / "signatures.yaml"
PROJECT_SOURCE = Path(__file__).parent / "data" / "signatures_project.yaml"

# Library order of a set's fields; fields the source adds later are kept after these.
_SET_FIELDS = (
    "category",
    "description",
    "use",
    "genes",
    "sources",
    "citations",
    "evidence_level",
    "evidence_notes",
    "gene_notes",
    "panels",
    "subsets",
)
_REQUIRED_STR = ("category", "description", "use", "evidence_level", "evidence_notes")
_SOURCE_ONLY = ("name", "size")


def _read_yaml(path: Path, *, what: str) -> Any:
    if not path.is_file():
        msg = f"{what} {path} does not exist."
        raise SignatureError(msg)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        msg = f"{what} {path} is not valid YAML: {err}"
        raise SignatureError(msg) from err


def format_reference(key: str, ref: dict) -> str:
    """Return one reference as a citation string with its DOI, PMID or URL.

    Parameters
    ----------
    key
        The reference key (used only in the error message).
    ref
        The reference entry: ``citation`` and optionally ``doi``, ``pmid``, ``url``,
        ``identifier_checked``.
    """
    if not isinstance(ref, dict) or not isinstance(ref.get("citation"), str):
        msg = f"Reference '{key}' has no 'citation' text; add one to the references."
        raise SignatureError(msg)
    parts = [ref["citation"].strip().rstrip(".")]
    if ref.get("doi"):
        parts.append(f"doi:{ref['doi']}")
    if ref.get("pmid"):
        parts.append(f"PMID:{ref['pmid']}")
    if ref.get("url") and not ref.get("doi"):
        parts.append(str(ref["url"]))
    text = ". ".join(parts)
    # Keep the curators' caveat with the citation wherever it is reported.
    if ref.get("identifier_checked") is False:
        text += " [identifier not yet checked]"
    return text


def _resolve_sources(name: str, sources: Any, references: dict) -> list[str]:
    if not isinstance(sources, list) or not all(isinstance(k, str) for k in sources):
        msg = f"Signature set '{name}', field 'sources': expected a list of reference keys."
        raise SignatureError(msg)
    for key in sources:
        if key not in references:
            msg = (
                f"Signature set '{name}', field 'sources': reference key '{key}' is not in "
                "'references'; add the reference or fix the key."
            )
            raise SignatureError(msg)
    return [format_reference(key, references[key]) for key in sources]


def _check_symbols(name: str, where: str, symbols: Any) -> None:
    if not isinstance(symbols, list) or not all(isinstance(g, str) and g for g in symbols):
        msg = f"Signature set '{name}', field '{where}': expected a list of gene symbols."
        raise SignatureError(msg)
    if len(set(symbols)) != len(symbols):
        dups = sorted({g for g in symbols if symbols.count(g) > 1})
        msg = f"Signature set '{name}', field '{where}': duplicated genes {dups}."
        raise SignatureError(msg)


def _check_gene_lists(name: str, genes: Any, *, field_name: str = "genes") -> None:
    if not isinstance(genes, dict):
        msg = f"Signature set '{name}', field '{field_name}': expected a mapping species -> list."
        raise SignatureError(msg)
    for species, symbols in genes.items():
        if species not in SPECIES:
            msg = (
                f"Signature set '{name}', field '{field_name}': unknown species '{species}' "
                f"(allowed: {', '.join(SPECIES)})."
            )
            raise SignatureError(msg)
        _check_symbols(name, f"{field_name}.{species}", symbols)


def _convert_set(entry: dict, references: dict) -> tuple[str, dict]:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        msg = f"A signature set has no 'name' (entry starts {str(entry)[:80]!r})."
        raise SignatureError(msg)
    _check_gene_lists(name, entry.get("genes"))
    for species, size in (entry.get("size") or {}).items():
        listed = len(entry["genes"].get(species) or [])
        if size != listed:
            msg = (
                f"Signature set '{name}', field 'size.{species}': says {size} but "
                f"'genes.{species}' lists {listed} genes; fix the source."
            )
            raise SignatureError(msg)
    out = {k: v for k, v in entry.items() if k not in _SOURCE_ONLY}
    # An empty list means "no list for this species" (e.g. the marker-panel set).
    out["genes"] = {sp: list(g) for sp, g in entry["genes"].items() if g}
    out["citations"] = _resolve_sources(name, entry.get("sources"), references)
    ordered = {k: out[k] for k in _SET_FIELDS if k in out}
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return name, ordered


def _read_source(source: Path) -> dict:
    raw = _read_yaml(source, what="Signature source")
    if not isinstance(raw, dict) or not {"references", "sets"} <= raw.keys():
        msg = f"Signature source {source} needs top-level 'references' and 'sets'."
        raise SignatureError(msg)
    if not isinstance(raw["references"], dict) or not isinstance(raw["sets"], list):
        msg = f"Signature source {source}: 'references' must be a mapping, 'sets' a list."
        raise SignatureError(msg)
    return raw


def _merged_references(raw: dict, extra: dict, *, project: Path) -> dict:
    references = dict(raw["references"])
    for key, ref in extra["references"].items():
        if key in references and references[key] != ref:
            msg = (
                f"Project signature source {project}: reference '{key}' differs from the "
                "curated source's; use the curated key or rename it."
            )
            raise SignatureError(msg)
        references[key] = ref
    return references


def _built_from(path: Path, raw: dict) -> dict:
    return {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "schema_version": raw.get("schema_version"),
    }


def build_library(source: Path, *, project: Path | None = None) -> dict:
    """Convert the curated signature source (and the project's sets) into the library format.

    Parameters
    ----------
    source
        The curated source YAML (``sets`` as a list with ``name``; ``references`` by key).
    project
        The project's own sets in the same format (e.g. :data:`PROJECT_SOURCE`), appended after
        the curated sets; its sets may cite references of either file. None: curated sets only.

    Returns
    -------
    dict
        The library: ``schema_version``, ``title``, ``built_from`` (file name and sha256; with
        ``project``, ``project`` the same for it), ``curation_notes`` (the project's appended)
        and ``references`` (the project's appended) verbatim, ``sets`` (name -> set, with
        resolved ``citations``) and ``external_msigdb_sets_not_shipped`` verbatim.
    """
    source = Path(source)
    raw = _read_source(source)
    extra = _read_source(Path(project)) if project is not None else {"references": {}, "sets": []}
    references = _merged_references(raw, extra, project=project)
    sets: dict[str, dict] = {}
    for where, entry in [(source, e) for e in raw["sets"]] + [(project, e) for e in extra["sets"]]:
        name, converted = _convert_set(entry, references)
        if name in sets:
            msg = f"Signature source {where}: set '{name}' is already in the library; rename it."
            raise SignatureError(msg)
        sets[name] = converted
    external = raw.get("external_msigdb_sets_not_shipped", [])
    for ext in external:
        if ext.get("source") is not None and ext["source"] not in references:
            msg = f"External set '{ext.get('name')}': source '{ext['source']}' is not a reference."
            raise SignatureError(msg)
    built_from = _built_from(source, raw)
    if project is not None:
        built_from["project"] = _built_from(Path(project), extra)
    library = {
        "schema_version": LIBRARY_SCHEMA_VERSION,
        "title": raw.get("title", ""),
        "built_from": built_from,
        "curation_notes": raw.get("curation_notes", []) + extra.get("curation_notes", []),
        "references": references,
        "sets": sets,
        "external_msigdb_sets_not_shipped": external,
    }
    validate_library(library, where=str(source))
    return library


def _check_panels(name: str, panels: Any) -> None:
    if not isinstance(panels, dict):
        msg = f"Signature set '{name}', field 'panels': expected species -> panel -> genes."
        raise SignatureError(msg)
    for species, by_panel in panels.items():
        if species not in SPECIES or not isinstance(by_panel, dict):
            msg = (
                f"Signature set '{name}', field 'panels.{species}': expected a known species "
                f"({', '.join(SPECIES)}) mapping panel name -> genes."
            )
            raise SignatureError(msg)
        for panel, genes in by_panel.items():
            _check_symbols(name, f"panels.{species}.{panel}", genes)


def _check_set(name: str, entry: Any, references: dict) -> None:
    if not isinstance(entry, dict):
        msg = f"Signature set '{name}': expected a mapping of fields."
        raise SignatureError(msg)
    for key in (*_REQUIRED_STR, "genes", "sources", "citations"):
        if key not in entry:
            msg = f"Signature set '{name}': field '{key}' is missing."
            raise SignatureError(msg)
    for key in _REQUIRED_STR:
        if not isinstance(entry[key], str):
            msg = f"Signature set '{name}', field '{key}': expected text."
            raise SignatureError(msg)
    if entry["use"] not in USES:
        msg = f"Signature set '{name}', field 'use': '{entry['use']}' is not one of {USES}."
        raise SignatureError(msg)
    _check_gene_lists(name, entry["genes"])
    _check_panels(name, entry.get("panels") or {})
    if not entry["genes"] and not entry.get("panels"):
        msg = f"Signature set '{name}': it has neither gene lists nor marker panels."
        raise SignatureError(msg)
    if entry["citations"] != _resolve_sources(name, entry["sources"], references):
        msg = (
            f"Signature set '{name}', field 'citations': does not match the references of its "
            "sources; rebuild the library with `python -m osteoimmune.signatures build`."
        )
        raise SignatureError(msg)


def validate_library(library: Any, *, where: str) -> None:
    """Check the structure of a library document; raise SignatureError naming set and field.

    Parameters
    ----------
    library
        The parsed library document.
    where
        Where it came from (file path), for the message.
    """
    if not isinstance(library, dict):
        msg = f"Signature library {where}: expected a mapping at the top level."
        raise SignatureError(msg)
    for key in ("schema_version", "references", "sets"):
        if key not in library:
            msg = f"Signature library {where}: top-level field '{key}' is missing."
            raise SignatureError(msg)
    if library["schema_version"] != LIBRARY_SCHEMA_VERSION:
        msg = (
            f"Signature library {where}: schema_version {library['schema_version']} is not "
            f"{LIBRARY_SCHEMA_VERSION}; rebuild it with `python -m osteoimmune.signatures build`."
        )
        raise SignatureError(msg)
    if not isinstance(library["references"], dict) or not isinstance(library["sets"], dict):
        msg = f"Signature library {where}: 'references' and 'sets' must be mappings."
        raise SignatureError(msg)
    for name, entry in library["sets"].items():
        _check_set(name, entry, library["references"])


def _check_species(species: str) -> None:
    if species not in SPECIES:
        msg = f"Unknown species '{species}'; allowed: {', '.join(SPECIES)}."
        raise SignatureError(msg)


def _write_text_atomic(path: Path, text: str) -> None:
    # Write beside the target and rename, so a failure never leaves a truncated file.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_gmt(path: Path, *, species: str) -> dict[str, dict]:
    """Read gene sets from a GMT file (name, description, genes; tab-separated).

    Parameters
    ----------
    path
        The GMT file.
    species
        The species the gene symbols belong to (``human`` or ``mouse``).

    Returns
    -------
    dict
        Set name -> ``{"description": ..., "genes": {species: [...]}}``, the user-set format
        that :meth:`SignatureLibrary.add_sets` accepts.
    """
    _check_species(species)
    path = Path(path)
    if not path.is_file():
        msg = f"GMT file {path} does not exist."
        raise SignatureError(msg)
    sets: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        name, description = fields[0], fields[1] if len(fields) > 1 else ""
        genes = list(dict.fromkeys(g for g in fields[2:] if g))
        if not name or not genes:
            msg = f"GMT file {path}, line {number}: expected name<TAB>description<TAB>genes..."
            raise SignatureError(msg)
        if name in sets:
            msg = f"GMT file {path}, line {number}: set '{name}' appears twice."
            raise SignatureError(msg)
        sets[name] = {"description": description, "genes": {species: genes}}
    return sets


def _user_document(doc: Any, *, where: str) -> tuple[dict, dict]:
    """Split a user YAML document into (sets by name, references)."""
    if not isinstance(doc, dict):
        msg = f"{where}: expected a mapping of set name -> set, or 'sets' (+ 'references')."
        raise SignatureError(msg)
    references = (doc.get("references") or {}) if "sets" in doc else {}
    sets = doc["sets"] if "sets" in doc else doc
    if isinstance(sets, list):
        if not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in sets):
            msg = f"{where}: every entry of the 'sets' list needs a 'name'."
            raise SignatureError(msg)
        sets = {e["name"]: e for e in sets}
    if not isinstance(sets, dict) or not isinstance(references, dict):
        msg = f"{where}: 'sets' and 'references' must be mappings."
        raise SignatureError(msg)
    return sets, references


def _user_set(name: str, entry: Any, references: dict) -> dict:
    if not isinstance(entry, dict) or not isinstance(entry.get("description"), str):
        msg = f"Signature set '{name}': field 'description' is required for user sets."
        raise SignatureError(msg)
    out = {
        "category": "user",
        "use": "score",
        "sources": [],
        "evidence_level": "user-supplied",
        "evidence_notes": "",
    }
    out.update({k: v for k, v in entry.items() if k not in (*_SOURCE_ONLY, "citations")})
    _check_gene_lists(name, out.get("genes", {}))
    out["genes"] = {sp: list(g) for sp, g in out.get("genes", {}).items() if g}
    out["citations"] = _resolve_sources(name, out["sources"], references)
    ordered = {k: out[k] for k in _SET_FIELDS if k in out}
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    _check_set(name, ordered, references)
    return ordered


@dataclass
class SignatureLibrary:
    """Gene sets with their sources, loaded from a library file (see :func:`load_library`).

    Attributes
    ----------
    sets
        Set name -> set (``category``, ``description``, ``use``, ``genes`` by species,
        ``sources``, ``citations``, ``evidence_level``, ``evidence_notes``, ...).
    references
        Reference key -> reference (``citation``, ``doi``, ``pmid``, ...).
    meta
        The other top-level fields of the library (``title``, ``built_from``, ...).
    """

    sets: dict[str, dict]
    references: dict[str, dict]
    meta: dict[str, Any] = field(default_factory=dict)

    def _entry(self, name: str) -> dict:
        if name not in self.sets:
            close = difflib.get_close_matches(name, list(self.sets), n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "see names(use=None)."
            msg = f"Unknown signature set '{name}'; {hint}"
            raise SignatureError(msg)
        return self.sets[name]

    def genes(self, name: str, species: str) -> list[str]:
        """Return the gene symbols of set ``name`` for ``species`` (``human`` or ``mouse``)."""
        _check_species(species)
        entry = self._entry(name)
        if not entry["genes"].get(species):
            have = ", ".join(entry["genes"]) or "none"
            panels = "; it has marker 'panels' instead" if entry.get("panels") else ""
            msg = f"Signature set '{name}' has no {species} gene list (lists: {have}{panels})."
            raise SignatureError(msg)
        return list(entry["genes"][species])

    def names(
        self, use: str | tuple[str, ...] | None = ("score",), species: str | None = None
    ) -> list[str]:
        """Return set names with ``use`` in ``use`` (None: any) and genes for ``species``."""
        if species is not None:
            _check_species(species)
        uses = (use,) if isinstance(use, str) else use
        return [
            name
            for name, entry in self.sets.items()
            if (uses is None or entry["use"] in uses)
            and (species is None or entry["genes"].get(species))
        ]

    def citation(self, name: str) -> str:
        """Return the resolved citations of set ``name``, joined by ``"; "``."""
        entry = self._entry(name)
        return "; ".join(entry["citations"]) or f"No source given for set '{name}'."

    def to_gmt(
        self, path: Path, *, species: str, use: str | tuple[str, ...] | None = None
    ) -> list[str]:
        """Write the sets with genes for ``species`` (and ``use``, None: any) as a GMT file.

        The description field holds the set's description and its first source, for gseapy.
        Returns the names written.
        """
        names = self.names(use=use, species=species)
        lines = []
        for name in names:
            entry = self.sets[name]
            description = entry["description"]
            if entry["sources"]:
                description += f" [{entry['sources'][0]}: {entry['citations'][0]}]"
            # GMT fields cannot hold tabs or line breaks.
            description = " ".join(description.split())
            lines.append("\t".join([name, description, *entry["genes"][species]]))
        _write_text_atomic(Path(path), "".join(f"{line}\n" for line in lines))
        return names

    def add_sets(self, extra: dict | Path, *, species: str | None = None) -> list[str]:
        """Add users' own sets from a mapping, a YAML file or a GMT file (needs ``species``).

        YAML sets use the library's per-set format; ``description`` and ``genes`` are
        required, ``sources`` (keys into the library's or the file's ``references``) optional.
        Names already in the library are an error. Returns the names added.
        """
        if isinstance(extra, dict):
            sets, references = _user_document(extra, where="User signature sets")
        elif Path(extra).suffix.lower() == ".gmt":
            if species is None:
                msg = f"GMT file {extra}: pass species= ({', '.join(SPECIES)}) for its genes."
                raise SignatureError(msg)
            sets, references = read_gmt(Path(extra), species=species), {}
        else:
            doc = _read_yaml(Path(extra), what="User signature file")
            sets, references = _user_document(doc, where=f"User signature file {extra}")
        for key, ref in references.items():
            if key in self.references and self.references[key] != ref:
                msg = f"User reference '{key}' differs from the library's; rename the key."
                raise SignatureError(msg)
        merged = {**self.references, **references}
        added = {}
        for name, entry in sets.items():
            if name in self.sets:
                msg = f"Signature set '{name}' is already in the library; rename the user set."
                raise SignatureError(msg)
            added[name] = _user_set(name, entry, merged)
        self.references.update(references)
        self.sets.update(added)
        return list(added)


def load_library(path: Path | None = None) -> SignatureLibrary:
    """Load and validate a signature library.

    Parameters
    ----------
    path
        The library YAML; defaults to the packaged ``osteoimmune/data/signatures.yaml``.

    Returns
    -------
    SignatureLibrary
        The sets, references and metadata of the library.
    """
    path = Path(path) if path is not None else DEFAULT_LIBRARY
    doc = _read_yaml(path, what="Signature library")
    validate_library(doc, where=str(path))
    meta = {k: v for k, v in doc.items() if k not in ("sets", "references")}
    return SignatureLibrary(sets=dict(doc["sets"]), references=dict(doc["references"]), meta=meta)


def write_library(library: dict, out: Path) -> None:
    """Write a library built by :func:`build_library` to ``out`` as YAML."""
    built = library.get("built_from", {})
    project = built.get("project")
    merged = f"\n# and {project['file']} (sha256 {project['sha256']})" if project else ""
    header = (
        f"# Built from {built.get('file')} (sha256 {built.get('sha256')}){merged} by\n"
        "# `python -m osteoimmune.signatures build SOURCE OUT`. Edit the sources and rebuild;\n"
        "# do not edit this file by hand.\n"
    )
    text = yaml.safe_dump(library, sort_keys=False, allow_unicode=True, width=100)
    _write_text_atomic(Path(out), header + text)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m osteoimmune.signatures build SOURCE OUT``."""
    parser = argparse.ArgumentParser(
        prog="python -m osteoimmune.signatures", description="Gene-signature library tools."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the library from the curated source")
    build.add_argument("source", type=Path, help="curated source signatures.yaml")
    build.add_argument("out", type=Path, help="library file to write")
    build.add_argument(
        "--project",
        type=Path,
        default=PROJECT_SOURCE,
        help="the project's own sets, merged after the curated ones (default: %(default)s)",
    )
    build.add_argument(
        "--no-project", action="store_true", help="build from the curated source only"
    )
    args = parser.parse_args(argv)
    try:
        library = build_library(args.source, project=None if args.no_project else args.project)
        write_library(library, args.out)
    except SignatureError as err:
        parser.exit(1, f"error: {err}\n")
    n_sets, n_refs = len(library["sets"]), len(library["references"])
    print(f"Wrote {n_sets} sets and {n_refs} references to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
