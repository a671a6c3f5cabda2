"""The bounds of generating text from a user's prompt (`graftune generate`, `graftune serve`'s /generate): what a
seed and a temperature may be, and whether a prompt and its new tokens fit the model's context. Light on
purpose: the CLI reads these before it imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from graftune.errors import UserError

# Generation settings a request or flag may give: torch.manual_seed takes seeds up to 2**64 - 1, and below a
# temperature of about 1e-37 the scaled logits overflow to inf and sampling fails; 0.01 already samples as
# greedily as anyone wants, and 0 means greedy.
MAX_SEED = 2**64 - 1
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class GenerationRoom:
    prompt_tokens: int
    context: int  # the most tokens the model reads: the prompt and every new token together


def check_generation(room: GenerationRoom, max_new_tokens: int, prompt_name: str = "prompt",
                     tokens_name: str = "max_new_tokens") -> None:
    """UserError unless the prompt and `max_new_tokens` new tokens fit the model's context; names the prompt and
    the token count as the caller's user knows them (a CLI flag, a request field). Refusing, rather than
    cutting the prompt, keeps the continuation one of the text the user sent, and bounds the work."""
    if room.prompt_tokens >= room.context:
        raise UserError(f"{prompt_name}: {room.prompt_tokens} tokens; the model reads at most {room.context} "
                        "(its context), new tokens included. Shorten the prompt to fewer than "
                        f"{room.context} tokens.")
    if room.prompt_tokens + max_new_tokens > room.context:
        tokens = f"{room.prompt_tokens} token" + "s" * (room.prompt_tokens != 1)
        raise UserError(f"{tokens_name} {max_new_tokens}: with the prompt's {tokens} that is "
                        f"over the model's context of {room.context} tokens. Give {tokens_name} at most "
                        f"{room.context - room.prompt_tokens}, or a shorter prompt.")
