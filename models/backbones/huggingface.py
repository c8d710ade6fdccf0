"""Hugging Face backbones: any model of `transformers` (a text encoder, a decoder, a vision
model) as a litlab backbone, from the Hub, from a local `save_pretrained` folder, or built from
an architecture's config with random weights.

`forward_features` gives the model's last hidden states, one vector per token or patch (B, T, F);
`forward` pools them (the mean over real tokens, the first token, or the last real token);
`out_features` is the hidden size. litlab's `padding_mask` (True at padding) becomes the model's
attention mask. With `lm_head`, the model is loaded with its own language-modelling head (tied to
its embeddings where the model ties them), which `models.LanguageModel` then uses for its logits.

Nothing in a model folder is run because the folder says so: `trust_remote_code` is never set,
so a model whose code is not part of `transformers` is refused. Weights are read from safetensors
files where the folder has them; transformers reads a `.bin` file only with `torch.load(...,
weights_only=True)`, which unpickles tensors and plain values alone.
"""

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import pickle
import sys
from typing import Any, Literal

import torch
from torch import nn

from models.backbones.registry import register
from models.errors import ConfigError

log = logging.getLogger(__name__)

Pool = Literal["mean", "first", "last"]
LMHead = Literal["causal", "masked"]

TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(
            "The HuggingFace backbone needs the transformers package; install it with pip install 'litlab[hf]'."
        ) from None


def _kernel_notice(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


def import_bitsandbytes() -> None:
    """Import bitsandbytes, where it is installed, before peft (as it adapts a layer) or transformers (for a
    4-bit base) does, without its fetch of a CPU kernel from the Hub. On a CPU with avx512-bf16 its import
    asks the Hub for a kernel (seconds offline, a download online) that serves only its bf16 inference
    path, which litlab turns off (`HuggingFace`); the Hub is offline for that import alone, and the notices
    that the kernel is missing, which a litlab user cannot act on, are left out."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
        logger = logging.getLogger(name)
        if _kernel_notice not in logger.filters:
            logger.addFilter(_kernel_notice)
    constants = importlib.import_module("huggingface_hub.constants")  # a dependency of peft and transformers
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        importlib.import_module("bitsandbytes")
    finally:
        constants.HF_HUB_OFFLINE = offline


@contextlib.contextmanager
def quiet(transformers):
    """transformers' warnings and progress bars off, for a while: notices a litlab user cannot act on."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _remote_code(err: Exception) -> bool:
    return "trust_remote_code" in str(err)


@register(
    tokens=[{"architecture": "bert", "config_overrides": {**TINY, "vocab_size": 32}},
            {"architecture": "llama", "config_overrides": {**TINY, "vocab_size": 32, "num_key_value_heads": 1}, "pool": "last"}],
    image={"architecture": "vit", "config_overrides": {**TINY, "image_size": 16, "patch_size": 4}, "pool": "first"},
)
class HuggingFace(nn.Module):
    """A `transformers` model: `name` (a Hub id such as google-bert/bert-base-uncased, or a local
    `save_pretrained` folder) or `architecture` (a transformers model type such as bert, gpt2,
    llama, vit: its default config, with random weights).

    pretrained: with `name`, load its weights; false builds the named model's architecture from
        its config with random weights (training from scratch).
    config_overrides: config fields to change (sizes, `vocab_size`, dropout...), for either form.
    vocab_size: the token vocabulary (litlab links the data's); a pretrained model's must equal it.
    pool: how `forward` makes one vector of a sequence: `mean` over real tokens, the `first`
        token (BERT's [CLS], ViT's class token), or the `last` real token (decoders).
    lm_head: load the model with its language-modelling head, `causal` (next token) or `masked`,
        for `models.LanguageModel`.
    gradient_checkpointing: recompute each block's activations in the backward pass instead of
        keeping them: less memory, about a third more compute.
    revision: the Hub revision (branch, tag or commit) to load.
    quantize: `4bit` loads the pretrained weights quantized to 4-bit NF4 through bitsandbytes, for
        QLoRA: only `mode: lora` trains such a base. On a CUDA GPU it computes in bf16; without one,
        on the CPU (bitsandbytes 0.50 or newer), in float32.
    """

    def __init__(
        self, name: str | None = None, architecture: str | None = None, pretrained: bool = True,
        config_overrides: dict[str, Any] | None = None, vocab_size: int | None = None, pool: Pool = "mean",
        lm_head: LMHead | None = None, gradient_checkpointing: bool = False, revision: str | None = None,
        quantize: Literal["4bit"] | None = None,
    ) -> None:
        super().__init__()
        if (name is None) == (architecture is None):
            raise ConfigError("HuggingFace needs one of name (a Hub id or a save_pretrained folder) or architecture "
                              "(a transformers model type such as bert, gpt2, llama, vit); got "
                              f"{'both' if name else 'neither'}.")
        transformers = _transformers()
        overrides = dict(config_overrides or {})
        config = self._config(transformers, name, architecture, overrides, revision)
        if vocab_size is not None and getattr(config, "vocab_size", vocab_size) != vocab_size:
            if not (name is not None and pretrained):
                config.vocab_size = vocab_size  # random weights: the embedding is sized for the data's tokenizer
            elif vocab_size > config.vocab_size:
                # More ids than rows would be read out of range; fewer are fine (an embedding padded to a
                # round number, as Qwen's is, has rows no id reads).
                raise ConfigError(
                    f"{name} has a vocabulary of {config.vocab_size} tokens but the data's tokenizer has {vocab_size}; "
                    "pretrained weights need the model's own tokenizer (set the data's tokenizer to the same name)."
                )
        auto = {None: transformers.AutoModel, "causal": transformers.AutoModelForCausalLM,
                "masked": transformers.AutoModelForMaskedLM}[lm_head]
        load = name is not None and pretrained
        extra = self._quantization(transformers, quantize, load) if quantize else {}
        try:
            # A .bin weights file is unpickled as tensors and plain values only (weights_only).
            with quiet(transformers):  # its progress bars of loading and a tied head's notices
                model = (auto.from_pretrained(name, config=config, revision=revision, dtype=torch.float32,
                                              trust_remote_code=False, weights_only=True, **extra) if load
                         else auto.from_config(config, trust_remote_code=False))
        except ValueError:
            # Raised by the auto class for a config it has no model of for this head.
            fix = "choose a model with that head, or leave lm_head unset" if lm_head else "choose another model"
            raise ConfigError(f"transformers has no {auto.__name__} for {config.model_type} models; {fix}.") from None
        except OSError as err:
            raise ConfigError(self._unreachable(name, err)) from None
        except pickle.UnpicklingError:
            raise ConfigError(
                f"{name}'s weights file holds more than tensors (a pickle that would run code as it loads), so it "
                "was not loaded; use the model's safetensors weights, or convert the file where you trust it."
            ) from None
        self.lm_head = lm_head
        self.quantize = quantize
        # from_pretrained leaves the model in eval mode, and Lightning keeps each module's mode through a
        # fit: dropout would stay off and gradient checkpointing (active in training mode only) unused.
        # Built in training mode, as every module is; the task switches it from there.
        self.model = model.train()
        if quantize and not torch.cuda.is_available():
            for module in model.modules():
                if hasattr(module, "support_avx512bf16_for_cpu"):
                    # bitsandbytes' CPU inference would repack a 4-bit weight, on its first forward in eval
                    # mode, into a layout for a bf16 kernel that its training and dequantizing paths do not
                    # read: validation would break the training after it. Float32 throughout instead.
                    module.support_avx512bf16_for_cpu = False
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # the model's own pooler is not litlab's pooling, and would get no gradient
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.input_name = model.main_input_name  # input_ids, or pixel_values for a vision model
        self.image = self.input_name == "pixel_values"
        self.channels = getattr(config, "num_channels", 3)
        self.interpolate = "interpolate_pos_encoding" in inspect.signature(self.encoder.forward).parameters
        self.pool = pool
        self.causal = lm_head == "causal"
        self.out_features = config.hidden_size
        self.vocab_size = getattr(config, "vocab_size", None)
        self.max_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        # The classes of the model's repeated blocks, which FSDP wraps one by one.
        self.block_classes = set(getattr(model, "_no_split_modules", None) or [])

    @staticmethod
    def _quantization(transformers, quantize: str, load: bool) -> dict:
        """from_pretrained's arguments for a 4-bit base (QLoRA: NF4 weights with double quantization),
        loaded straight onto this process's GPU, computing in bf16, or where there is none onto the CPU,
        computing in float32; one line where it cannot be."""
        if quantize != "4bit":
            raise ConfigError(f"quantize must be 4bit or null; got {quantize!r}.")
        if not load:
            raise ConfigError("quantize: 4bit quantizes pretrained weights as they load; give name with pretrained: "
                              "true, or leave quantize unset for random weights.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("quantize: 4bit needs the bitsandbytes package; install it with pip install "
                              "'litlab[qlora]'.")
        import_bitsandbytes()
        cuda = torch.cuda.is_available()
        if not cuda and tuple(int(n) for n in importlib.metadata.version("bitsandbytes").split(".")[:2]) < (0, 50):
            raise ConfigError("quantize: 4bit without a CUDA GPU needs bitsandbytes 0.50 or newer (its CPU backend); "
                              "install it with pip install 'litlab[qlora]', or run on a GPU.")
        # QLoRA's recipe on a GPU computes in bf16; a CPU computes in float32, where bf16 matmuls are slow.
        config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_use_double_quant=True,
                                                 bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
        return {"quantization_config": config, "device_map": {"": torch.cuda.current_device() if cuda else "cpu"}}

    @property
    def encoder(self) -> nn.Module:
        """The model without its head (the model itself where it has none)."""
        return self.model.base_model

    @staticmethod
    def _config(transformers, name, architecture, overrides, revision):
        if architecture is not None:
            try:
                return transformers.AutoConfig.for_model(architecture, **overrides)
            except ValueError:
                raise ConfigError(f"transformers has no model type {architecture!r}; choose one of "
                                  "transformers.CONFIG_MAPPING, such as bert, gpt2, llama, vit.") from None
        try:
            config = transformers.AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False)
        except ValueError as err:
            if _remote_code(err):
                raise ConfigError(
                    f"{name} needs code that is not part of transformers (its config names its own classes), and "
                    "litlab never runs code a model folder brings; choose a model transformers implements."
                ) from None
            raise ConfigError(f"{name}: {err}") from None
        except OSError as err:
            raise ConfigError(HuggingFace._unreachable(name, err)) from None
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ConfigError(f"config_overrides: {type(config).__name__} has no field {key!r}.")
            setattr(config, key, value)
        return config

    @staticmethod
    def _unreachable(name: str, err: OSError) -> str:
        return (f"Could not load {name!r} ({str(err).splitlines()[0]}); if it is a Hub id and this machine has no "
                "internet, download it elsewhere (huggingface-cli download NAME --local-dir FOLDER) and set name to the folder.")

    def _inputs(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> dict[str, Any]:
        if self.image:
            if x.shape[1] == 1 and self.channels == 3:
                x = x.expand(-1, 3, -1, -1)  # a grey image read as colour
            inputs = {"pixel_values": x}
            if self.interpolate:
                inputs["interpolate_pos_encoding"] = True  # images of another size than the config's
            return inputs
        inputs = {self.input_name: x}
        if padding_mask is not None:
            inputs["attention_mask"] = (~padding_mask).long()
        return inputs

    def forward_features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden states (B, T, F): one per token, or per patch (and class token)."""
        return self.encoder(**self._inputs(x, padding_mask)).last_hidden_state

    def forward_logits(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The language-modelling head's logits (B, T, vocab), as the model itself computes them."""
        if self.lm_head is None:
            raise ConfigError("This HuggingFace backbone was loaded without its language-modelling head; set lm_head.")
        return self.model(**self._inputs(x, padding_mask)).logits

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        features = self.forward_features(x, padding_mask)  # (B, T, F)
        if self.pool == "first":
            return features[:, 0]
        keep = None if padding_mask is None or self.image else (~padding_mask).to(features.dtype).unsqueeze(-1)
        if self.pool == "mean":
            return features.mean(dim=1) if keep is None else (features * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        if keep is None:
            return features[:, -1]
        last = keep.squeeze(-1).cumsum(dim=1).argmax(dim=1)  # (B,): the last real position
        return features[torch.arange(len(features), device=features.device), last]
