"""The default word lists of the moderation layer, one file per category (`<category>.txt`).

Package data, not code: `qfserve.chat.safety.lists` reads them. The format, shared with the extra
lists named in the settings: UTF-8, one term per line, blank lines and lines starting with `#`
ignored, and a line `category: NAME` setting the category of the terms after it (otherwise the
file's name). Terms are matched after normalisation (width, case, spaces and punctuation), so each
is written once, in its plain form. A term in a script written with spaces between words (Latin
letters, digits) matches only as whole words, so "make a bomb" does not flag "make a bombshell".
Terms are chosen not to flag ordinary chat: phrases of intent and trade, not bare topic words.
"""
