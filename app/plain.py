"""User strings (cell-type and run names, file names, messages that quote them) shown as text, not markdown
(issue 12, point 13). ``st.error``, ``st.warning``, captions and the like render markdown, so a crafted
cell-type name ``![x](http://127.0.0.1:9/)`` made the browser request an image.

The characters that open markup get a backslash, which markdown turns back into the character: links and
images need ``[``, emphasis ``*``/``_``, code a backtick, autolinks and HTML ``<``, LaTeX ``$``, tables ``|``,
strikethrough ``~``, headings ``#``; an emoji or icon shortcode is ``:name:``; a list needs a leading ``-``,
``+`` or ``1.`` on a line, and the text is put on one line first. Others (``.``, ``(``, ``-`` inside) stay as
they are, so messages read as before.
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\`*_\[\]<>$|~#])")
_SHORTCODE = re.compile(r":(?=[A-Za-z0-9_/+\-]+:)")
_LIST_START = re.compile(r"^(\s*)([-+]|\d+(?=[.)]))")


def plain(text) -> str:
    """``text`` on one line, escaped so that markdown shows it literally."""
    one_line = " ".join(str(text).split())
    escaped = _SHORTCODE.sub(r"\\:", _SPECIAL.sub(r"\\\1", one_line))
    # a backslash before a digit is no escape in markdown: "1." is kept a number by escaping its dot
    return _LIST_START.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit()
                                                   else "\\" + m.group(2)), escaped)
