"""The pages' shared widgets: errors and flash messages, text escaping, the label picker and coverage
meter, document cards, uploads and downloads that build their file on click."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import streamlit as st

from dallmi_core import DallmiError

if TYPE_CHECKING:
    from dallmi_core import Document, Project
    from dallmi_core.app.services import LabelCoverage

T = TypeVar("T")
_FLASH_KEY = "_flash"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~<$])")
_MARKUP = re.compile(r"([\\<>\[\]])")


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a DallmiError as a message (never a traceback); anything else is a bug and propagates."""
    try:
        yield
    except DallmiError as exc:
        st.error(plain(str(exc)), icon=":material/error:")


def attempt(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """fn(*args, **kwargs), or None after showing its DallmiError."""
    try:
        return fn(*args, **kwargs)
    except DallmiError as exc:
        st.error(plain(str(exc)), icon=":material/error:")
        return None


def store_action(action: Callable[..., T], *args: Any, then: Callable[[T], None] | None = None) -> None:
    """A button's on_click callback: action(*args) runs before the script, so everything the run draws
    (the label picker's counts, the coverage) already shows its effect; then(result) on success, a
    DallmiError as an error message at the top of that run."""
    try:
        result = action(*args)
    except DallmiError as exc:
        flash(plain(str(exc)), "error")
        return
    if then is not None:
        then(result)


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, at the top of the next run (use before st.rerun())."""
    st.session_state.setdefault(_FLASH_KEY, []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop(_FLASH_KEY, []):
        getattr(st, kind, st.info)(message)


def md_escape(text: str) -> str:
    """Text shown through a Markdown element, literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def plain(message: str) -> str:
    """A message that quotes user text (file names, labels, ids) shown through Markdown: no HTML tag,
    autolink or link can form, while the message's own `code` spans still render."""
    return _MARKUP.sub(r"\\\1", str(message))


def coverage_text(c: LabelCoverage) -> str:
    mark = "✓" if c.enough else ("·" if c.positives else "✗")
    return f"{c.label}  {mark} {c.positives}/{c.minimum} tagged"


def label_picker(project: Project, coverage: Sequence[LabelCoverage], *, key: str = "label_picker") -> str:
    """A searchable selectbox over the project's labels (type to filter: usable with 50+ labels), each
    option showing its tagged positives against the recommended minimum. Remembers the label per project."""
    labels = list(project.labels)
    remembered = f"_label:{project.id}"
    if st.session_state.get(key) not in labels:
        st.session_state.pop(key, None)
        if st.session_state.get(remembered) in labels:
            st.session_state[key] = st.session_state[remembered]
    by_label = {c.label: c for c in coverage}
    texts = {name: coverage_text(by_label[name]) if name in by_label else name for name in labels}
    # The browser keeps the selected option's text as the widget's value and shows it until it is sent a
    # value: when the selected label's count changed since the last draw, set it again so the box shows
    # the new count (the option list alone is not enough).
    drawn, selected = st.session_state.get(f"_label_texts:{key}", {}), st.session_state.get(key)
    if selected in labels and drawn.get(selected, texts[selected]) != texts[selected]:
        st.session_state[key] = selected
    label = st.selectbox(
        "Label",
        labels,
        key=key,
        format_func=lambda name: texts.get(name, name),
        help="Type to search the labels. ✓: enough positives tagged; ✗: none yet (adaptation skips it).",
    )
    st.session_state[remembered] = label
    st.session_state[f"_label_texts:{key}"] = texts
    return label


def coverage_meter(coverage: Sequence[LabelCoverage], highlight: str | None = None) -> None:
    """The selected label's meter, a summary, and every label's meter in a compact table."""
    if not coverage:
        return
    by_label = {c.label: c for c in coverage}
    if highlight in by_label:
        c = by_label[highlight]
        st.progress(
            min(1.0, c.positives / max(c.minimum, 1)),
            text=f"**{md_escape(c.label)}**: {c.positives} of the recommended {c.minimum} positives tagged · "
            f"{c.reviewed_not} reviewed: not · {c.unreviewed} unreviewed",
        )
    enough = sum(c.enough for c in coverage)
    empty = [c.label for c in coverage if not c.positives]
    summary = f"{enough} of {len(coverage)} labels have enough positives."
    if empty:
        shown = ", ".join(map(md_escape, empty[:8])) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        summary += f" No positive yet (skipped by adaptation): {shown}."
    with st.expander(f"Coverage of all labels — {summary}"):
        st.dataframe(
            {
                "label": [c.label for c in coverage],
                "tagged": [c.positives for c in coverage],
                "coverage": [min(1.0, c.positives / max(c.minimum, 1)) for c in coverage],
                "reviewed: not": [c.reviewed_not for c in coverage],
                "unreviewed": [c.unreviewed for c in coverage],
            },
            hide_index=True,
            column_config={
                "coverage": st.column_config.ProgressColumn(
                    "of recommended minimum", min_value=0.0, max_value=1.0, format="percent"
                )
            },
        )


def document_card(doc: Document, *, caption: str = "", limit: int = 600, tags: Sequence[str] = ()) -> None:
    """One document in a bordered box; texts longer than `limit` characters are collapsed."""
    with st.container(border=True):
        line = f"`{doc.ext_id}` · {doc.domain}"
        if tags:
            line += " · tagged: " + ", ".join(md_escape(t) for t in tags)
        if caption:
            line += f" · {caption}"
        st.caption(line)
        text = doc.text
        if len(text) <= limit:
            st.text(text)
        else:
            st.text(text[:limit].rstrip() + " …")
            with st.expander(f"Show all ({len(text):,} characters)"):
                st.text(text)


def digest(*parts: Any) -> str:
    """A short stable key for widget state that must start over when `parts` change."""
    return hashlib.sha1(repr(parts).encode("utf-8")).hexdigest()[:16]


def shorten(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def uploaded_path(uploaded) -> Path:
    """An st.file_uploader file on disk under its own name (the importer's messages name the file),
    in a folder per upload that `forget_upload` removes; written once per upload."""
    file_id = re.sub(r"[^A-Za-z0-9_-]", "", str(uploaded.file_id)) or "unnamed"
    folder = Path(tempfile.gettempdir()) / "dallmi-uploads" / file_id
    name = re.sub(r"[\x00-\x1f\x7f]", "", Path(str(uploaded.name).replace("\\", "/")).name).strip()
    while len(name.encode()) > 200:  # file systems allow 255 bytes; keep the end, where the suffix is
        name = name[1:]
    path = folder / (name if name.strip(".") else "upload")  # never a path: no separator, NUL, '.' or '..'
    if not path.is_file() or path.stat().st_size != uploaded.size:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(uploaded.getvalue())
    return path


def forget_upload(path: Path) -> None:
    shutil.rmtree(Path(path).parent, ignore_errors=True)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "project"


def exported(export: Callable[..., Path], *args: Any, file_name: str, **options: Any) -> Callable[[], bytes]:
    """A st.download_button callable: runs an exporter.export_*(store, ..., path=<temp dir>/file_name) on
    click and returns the file's bytes, so nothing is built on page load and nothing piles up under exports/."""

    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix="dallmi-export-") as tmp:
            return Path(export(*args, path=Path(tmp) / file_name, **options)).read_bytes()

    return build


def download(
    label: str, export: Callable[..., Path], *args: Any, file_name: str, mime: str, key: str, **options: Any
) -> None:
    """A download button whose file an exporter.export_* function writes when it is clicked."""
    st.download_button(
        label,
        data=exported(export, *args, file_name=file_name, **options),
        file_name=file_name,
        mime=mime,
        on_click="ignore",
        key=key,
        icon=":material/download:",
    )
