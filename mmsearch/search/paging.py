"""How far and how large a browse page may be, on every face (CLI, HTTP, Python). A module of its
own and of plain constants, so the CLI's options read them without importing pydantic."""

BROWSE_MAX_OFFSET = 1_000_000  # a browse page's start: an OFFSET walks the rows before it
BROWSE_MAX_LIMIT = 200  # items on a browse page
