"""Builds a small byte-level BPE tokenizer with Gemma-4-style special tokens and chat template.

Used for the built-in demo model and for the tiny models the tests build. The special-token
names and the chat template follow Gemma 4, so the engine treats a tiny model exactly as it
treats the real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = [
    "<pad>",  # 0: generate() replaces everything after EOS with pad id 0
    "<eos>",  # 1
    "<bos>",  # 2
    "<unk>",  # 3
    "<mask>",  # 4
    "<|turn>",  # 5: start of a turn
    "<turn|>",  # 6: end of a turn (an EOS id, like 106 in the real checkpoint)
    "<|channel>",  # 7
    "<channel|>",  # 8
    "<|image>",  # 9
    "<image|>",  # 10
    "<|image|>",  # 11
]
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
END_OF_TURN_ID = 6
IMAGE_TOKEN_ID, BOI_TOKEN_ID, EOI_TOKEN_ID = 11, 9, 10

# Gemma 4's template shape: turns are "<|turn>ROLE\n...<turn|>\n", the assistant role is
# "model", and the generation prompt opens an empty thought channel. Earlier model turns are
# rendered without that channel, as the real template does. Tools and thinking follow Gemma 4
# too (declarations and <|think|> in the system turn, <|tool_call>/<|tool_response> blocks),
# and render nothing extra when unused, so plain chats match what the demo model learned.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set first_is_system = messages and messages[0]['role'] == 'system' %}"
    "{% if tools or enable_thinking %}"
    "{{ '<|turn>system\n' }}{% if enable_thinking %}{{ '<|think|>' }}{% endif %}"
    "{% if first_is_system %}{{ messages[0]['content'] | trim }}{% endif %}"
    "{% for tool in tools or [] %}{% set f = tool['function'] if tool['function'] is defined else tool %}"
    "{{ '<|tool>declaration:' + f['name'] + '{description:<|\"|>' + (f['description'] or '') + '<|\"|>,parameters:' + (f['parameters'] or {}) | tojson + '}<tool|>' }}"
    "{% endfor %}"
    "{{ '<turn|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (loop.first and first_is_system and (tools or enable_thinking)) %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|turn>tool\n<|tool_response>response:' + message['name'] + '{value:<|\"|>' + (message['content'] or '') | trim + '<|\"|>}<tool_response|><turn|>\n' }}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<|turn>' + role + '\n' + (message['content'] or '') | trim }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '<|tool_call>call:' + call['function']['name'] + '{' }}"
    "{% for key, value in call['function']['arguments'] | dictsort %}"
    "{{ (',' if not loop.first else '') + key + ':' }}"
    "{% if value is string %}{{ '<|\"|>' + value + '<|\"|>' }}{% else %}{{ value | tojson }}{% endif %}"
    "{% endfor %}"
    "{{ '}<tool_call|>' }}"
    "{% endfor %}"
    "{{ '<turn|>\n' }}"
    "{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n' }}"
    "{% if not enable_thinking %}{{ '<|channel>thought\n<channel|>' }}{% endif %}{% endif %}"
)

DEFAULT_CORPUS = """\
The quick brown fox jumps over the lazy dog. Canvas Chat runs DiffusionGemma on your own PC.
A diffusion model writes a whole block of text at once and refines it step by step.
What is the capital of France? The capital of France is Paris.
Hello! How can I help you today? I am a tiny demo model.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1000.
Colours: red green blue yellow orange purple black white.
def add(a, b):
    return a + b
| name | value |
|------|-------|
| steps | 48 |
"""


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Trains a byte-level BPE on `corpus` and wraps it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else DEFAULT_CORPUS.splitlines()
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=SPECIAL_TOKENS[5:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
