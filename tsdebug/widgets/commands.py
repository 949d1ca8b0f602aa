"""tsdebug's own commands in the command palette (Ctrl+P), one per key binding of the app.

Listed from the app's bindings themselves, so the palette, the footer and
the help screen cannot disagree; each runs the binding's action, the way its
key does.
"""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

#: Bindings that make no sense from a palette (cancelling, the palette's own keys).
_SKIP = {"cancel"}


class TsdebugCommands(Provider):
    def _commands(self) -> list[tuple[str, str, str]]:
        """(title, key, action) for each of the app's bindings."""
        app = self.app
        out = []
        seen = set()
        for b in app.BINDINGS:
            if b.action in _SKIP or b.action in seen:
                continue
            seen.add(b.action)
            key = app.key_label(b.key) if hasattr(app, "key_label") else b.key
            out.append((b.description, key, b.action))
        return out

    def _run(self, action: str) -> None:
        self.app.call_later(self.app.run_action, action)

    async def discover(self) -> Hits:
        for title, key, action in self._commands():
            yield DiscoveryHit(title, partial(self._run, action), help=f"key: {key}")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, key, action in self._commands():
            score = matcher.match(f"{title} {key}")
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, action), text=title,
                          help=f"key: {key}")
