"""'Did you mean' suggestions for mistyped names."""

import difflib


def did_you_mean(name, candidates) -> str:
    """Return ``" (did you mean 'x'?)"`` or an empty string."""
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
