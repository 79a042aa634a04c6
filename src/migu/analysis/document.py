"""A report as a list of blocks (headings, paragraphs, bullets, tables, images), rendered to
Markdown (images by relative path) or to one self-contained HTML file (images embedded), so
``migu report`` writes both from one document."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


# ---------------------------------------------------------------------------- document model
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    path: Path  # absolute
    alt: str
    caption: str = ""


Block = Heading | Para | Bullets | Table | Image


@dataclass
class Document:
    """Blocks rendered to Markdown (images by relative path) or HTML (images embedded)."""

    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block) -> None:
        self.blocks.append(block)

    def to_markdown(self, base: Path) -> str:
        out: list[str] = []
        for b in self.blocks:
            if isinstance(b, Heading):
                out.append("#" * b.level + " " + b.text)
            elif isinstance(b, Para):
                out.append(b.text)
            elif isinstance(b, Bullets):
                out.append("\n".join(f"- {i}" for i in b.items))
            elif isinstance(b, Table):
                cell = [[c.replace("|", "\\|") for c in row] for row in [b.header, *b.rows]]
                lines = ["| " + " | ".join(cell[0]) + " |", "|" + "|".join("---" for _ in b.header) + "|"]
                lines += ["| " + " | ".join(r) + " |" for r in cell[1:]]
                out.append("\n".join(lines) + (f"\n\n{b.caption}" if b.caption else ""))
            elif isinstance(b, Image):
                rel = b.path.relative_to(base) if b.path.is_relative_to(base) else b.path
                out.append(f"![{b.alt}]({rel.as_posix()})" + (f"\n\n*{b.caption}*" if b.caption else ""))
        return "\n\n".join(out) + "\n"

    def to_html(self, title: str) -> str:
        def e(text: str) -> str:  # escaped, with Markdown `code` spans kept as <code>
            return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))

        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
            "line-height:1.45;color:#222}table{border-collapse:collapse;margin:.5em 0}"
            "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}"
            "figure{margin:1em 0}figcaption{font-size:.9em;color:#555}</style>",
            "</head><body>",
        ]
        for b in self.blocks:
            if isinstance(b, Heading):
                out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
            elif isinstance(b, Para):
                out.append(f"<p>{e(b.text)}</p>")
            elif isinstance(b, Bullets):
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
            elif isinstance(b, Table):
                head = "".join(f"<th>{e(h)}</th>" for h in b.header)
                body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
                cap = f"<p>{e(b.caption)}</p>" if b.caption else ""
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{cap}")
            elif isinstance(b, Image):
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                cap = f"<figcaption>{e(b.caption)}</figcaption>" if b.caption else ""
                img = f'<img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">'
                out.append(f"<figure>{img}{cap}</figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"
