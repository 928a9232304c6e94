"""Save and read artifacts on the configured backend (default: memory). Run: uv run python examples/quickstart.py"""

from __future__ import annotations

from artifactstore_core import Message, create_store


def main() -> None:
    with create_store(namespace="quickstart") as store:
        store.save("fetch", Message(content="The quick brown fox jumps over the lazy dog."))
        words = store.get("fetch").content.split()
        store.save("count", Message(content={"words": len(words), "longest": max(words, key=len)}))
        for info in store.list():
            print(f"{info.step_id:8} {info.size:6} bytes  {info.media_type}")
        print("result:", store.get("count").to_python())
        store.clear()


if __name__ == "__main__":
    main()
