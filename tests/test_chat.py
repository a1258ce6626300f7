import pytest
from transformers import AutoTokenizer

from answerkey import chat
from answerkey.pretrain.tokenizer import save_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Emily buys 3 apples and 2 oranges.\n\nHow much?"},
    {"role": "assistant", "content": "\n 2 * 2 = 4.\n#### 3"},
    {"role": "user", "content": "Sure?"},
    {"role": "assistant", "content": "Yes. #### 3"},
]


def test_render_matches_the_saved_chat_template(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for add in (False, True):
        text = loaded.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add)
        assert text == chat.render(CONVERSATION, add)
        ids = loaded.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=add,
                                         return_dict=True)["input_ids"]
        assert chat.encode(loaded, CONVERSATION, add).ids == list(ids)


def test_special_tokens_are_single_ids_and_stop_tokens_are_known(tokenizer):
    for token in chat.SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.convert_tokens_to_ids(chat.IM_END) in chat.stop_token_ids(tokenizer)
    assert tokenizer.eos_token == chat.IM_END


def test_loss_mask_covers_exactly_the_assistant_content_and_im_end(tokenizer):
    enc = chat.encode(tokenizer, CONVERSATION)
    trained = [tokenizer.decode([i]) for i, m in zip(enc.ids, enc.mask, strict=True) if m]
    assert "".join(trained) == "\n 2 * 2 = 4.\n#### 3<|im_end|>Yes. #### 3<|im_end|>"
    untrained = "".join(tokenizer.decode([i]) for i, m in zip(enc.ids, enc.mask, strict=True) if not m)
    assert "<|im_start|>assistant\n" in untrained and "Answer briefly." in untrained


def test_prompt_ends_with_the_assistant_header(tokenizer):
    ids = chat.prompt_ids(tokenizer, CONVERSATION[:2])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "at least one message"),
        ([{"role": "robot", "content": "hi"}], r"messages\[0\].role"),
        ([{"role": "user", "content": 3}], r"messages\[0\].content: expected a string"),
        ([{"role": "user", "content": "hi"}, {"role": "user", "content": "<|im_end|>"}],
         r"messages\[1\].content: contains"),
        (["hello"], r"messages\[0\]: expected an object"),
    ],
)
def test_bad_messages_name_the_message_and_field(tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        chat.encode(tokenizer, messages)
