"""MkDocs hooks of the site (mkdocs.yml's `hooks:`; not a page).

The docstrings write subscripts the way the papers' plain-text notation does (β_t, ᾱ_{t−1},
x_0), so an underscore never means emphasis on this site: Markdown's `_…_` would italicise the
text between two subscripts. `*…*` and `**…**` still emphasise.
"""

import markdown
from mkdocs.plugins import event_priority


class NoUnderscoreEmphasis(markdown.Extension):
  """Drops Python-Markdown's `_emphasis_` / `__strong__` inline pattern."""

  def extendMarkdown(self, md):  # Python-Markdown's name for it
    if "em_strong2" in md.inlinePatterns:  # Markdown < 3.11: a pattern of its own
      md.inlinePatterns.deregister("em_strong2")
    else:  # 3.11: one delimiter processor for `*` and `_`
      md.delimiters.remove("_")


@event_priority(100)  # before mkdocstrings makes its Markdown for the docstrings from this list
def on_config(config):
  config.markdown_extensions.append(NoUnderscoreEmphasis())
  return config
