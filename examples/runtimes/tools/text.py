"""A Python tool file: each public function is a command of the `python` runtime."""


def count_words(text: str) -> int:
    """Counts the words of a text."""
    return len(text.split())


async def title_case(text: str) -> str:
    """async def works too."""
    return text.title()
