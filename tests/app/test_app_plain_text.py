"""User strings reach the page as text (issue 12, point 13): whatever a cell-type or run name holds, markdown
renders ``plain(name)`` as exactly that name, with no link, image, emphasis, code, list or heading, and no
emoji/icon shortcode or LaTeX left to interpret."""

import html
import random
import re

import pytest
from markdown_it import MarkdownIt

from app.plain import plain

MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
CRAFTED = [
    "![x](http://127.0.0.1:9/a.png)", "[click](javascript:alert(1))", "<http://127.0.0.1:9/>", "**bold** _it_",
    "`code`", "# heading", "- item", "1. first", "+ plus", "a | b\n--|--\n1 | 2", "~~gone~~", "<img src=x>",
    ":material/warning: :smile:", "$x^2$", "T cells (CD4+)", "sham\\_1", "a\nb\n\n* c",
]


def _rendered_text(source: str) -> str:
    rendered = MD.render(source).strip()
    match = re.fullmatch(r"<p>(.*)</p>", rendered, flags=re.S)
    assert match, rendered  # one paragraph, nothing else (no list, heading, table, HTML block)
    inner = match.group(1)
    assert "<" not in inner.replace("&lt;", ""), inner  # no tag inside it: no link, image, emphasis, code
    return html.unescape(inner)


@pytest.mark.parametrize("name", CRAFTED)
def test_a_crafted_name_renders_as_itself(name):
    assert _rendered_text(plain(name)) == " ".join(name.split())


def test_any_mix_of_markdown_characters_renders_as_itself():
    rng = random.Random(0)
    alphabet = "ab1 .-+()[]!*_`<>#|~$:/\\=&\n"
    for _ in range(2000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        if not name.split():
            continue
        assert _rendered_text(plain(name)) == " ".join(name.split()), repr(name)


def test_no_shortcode_or_latex_is_left_for_streamlit():
    for name in CRAFTED:
        escaped = plain(name)
        assert not re.search(r"(?<!\\):[A-Za-z0-9_/+\-]+:", escaped)
        assert not re.search(r"(?<!\\)\$", escaped)


def test_ordinary_punctuation_is_left_alone():
    message = "not an .h5ad (HDF5) file; run 'x-1' failed: step 3."
    assert plain(message) == message
    assert _rendered_text(plain("export it with adata.write_h5ad()")) == "export it with adata.write_h5ad()"
