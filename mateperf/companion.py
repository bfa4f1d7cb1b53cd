"""Realistic Desktop-Mate conversation turns: the workload every model phase runs.

The companion sends a persona system prompt, a short history and the user's message through
the model's chat template, and expects a short reply with an emotion tag that drives the
avatar's expression. Benchmarks on these turns measure what a user waits for.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are Mate, a cheerful desktop companion who lives on the user's screen as an anime "
    "avatar. Keep replies short and warm: one to three sentences. End every reply with one "
    "emotion tag in square brackets chosen from [happy], [sad], [surprised], [thinking], "
    "[angry], [relaxed], so the avatar can change its expression."
)

USER_TURNS = (
    "Good morning! I have a big presentation at work today and I'm a little nervous.",
    "Can you remind me to drink some water every hour?",
    "What do you think I should cook for dinner tonight? Something quick, please.",
    "I finally fixed the bug I was stuck on for two days!",
    "Tell me a short fun fact about octopuses.",
    "I'm feeling kind of lonely this evening.",
    "Do you remember what I said about my presentation? It went really well.",
    "Give me three ideas for a relaxing weekend at home.",
    "Why is the sky blue? Explain it like I'm ten.",
    "Thanks for keeping me company today. Good night!",
)

WARMUP_USER_TURN = "Hi!"

# History kept by the companion: the last 10 messages (user and assistant), as the app does.
HISTORY_LIMIT = 10


def chat_messages(user: str, history: list[dict] | None = None) -> list[dict]:
    """System prompt, the trimmed history, then the user's message."""
    kept = (history or [])[-HISTORY_LIMIT:]
    return [{"role": "system", "content": SYSTEM_PROMPT}, *kept, {"role": "user", "content": user}]


def fold_system_prompt(messages: list[dict]) -> list[dict]:
    """Gemma has no system role: its official template prepends it to the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            break
    return rest


def chat_format_for(llm) -> str | None:
    """The model's own template when its GGUF has one; Gemma's format for Gemma without one."""
    meta = getattr(llm, "metadata", {}) or {}
    if meta.get("tokenizer.chat_template"):
        return None
    if meta.get("general.architecture", "").startswith("gemma"):
        return "gemma"
    return None


def prepare_messages(llm, messages: list[dict]) -> list[dict]:
    if chat_format_for(llm) == "gemma":
        return fold_system_prompt(messages)
    return messages
