"""The operators a model file may call without ``--trust-code``: an allowlist of pure tensor
operators, shared by the ``.pt2`` checker (:mod:`.export_program`, :mod:`.export_archive`)
and the TorchScript checker (:mod:`.torchscript_code`).

A pure operator computes tensors (or shapes) from its arguments and nothing else: it opens no
file (``aten.from_file``), prints nothing (``aten._print``, ``prim::Print``), neither sets nor
reads the random generator's state (``aten.manual_seed``), talks to no other process
(``c10d``, ``_c10d_functional``), loads no library and runs no loop of its own. Names are ATen
operator packets (``aten.add`` stands for ``add.Tensor``, ``add.Scalar``, ``add.out`` ...);
an in-place variant (``relu_``, ``add_``) of a listed operator is listed with it: it writes
into a tensor of the model, which is memory, not a side effect outside the process. Every
other operator, every other namespace (custom ops, ``quantized``, ``mkldnn``, ``profiler``)
is refused. :data:`SAMPLING` operators draw from the random generator: a ``.pt2`` graph may
hold them only when they cannot draw (``dropout(train=False)``); TorchScript keeps them in
training-only branches (timm's ``drop_path``), which attrcert's eval mode never takes.
"""

from __future__ import annotations

__all__ = ["ATEN", "PRIMS", "SAMPLING", "TORCHSCRIPT_ATEN", "TORCHSCRIPT_PRIM",
           "aten_allowed", "inactive_when", "sampling"]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Elementwise arithmetic, comparisons and math functions.
POINTWISE = _names("""
    abs absolute acos arccos acosh arccosh asin arcsin asinh arcsinh atan arctan atanh arctanh
    atan2 arctan2 ceil floor round trunc fix frac sign sgn signbit neg negative positive
    reciprocal sqrt rsqrt square exp exp2 expm1 log log2 log10 log1p sin cos tan sinh cosh tanh
    sigmoid logit erf erfc erfinv lgamma digamma polygamma mvlgamma i0 sinc deg2rad rad2deg
    nan_to_num isnan isinf isfinite isposinf isneginf isreal logical_not logical_and logical_or
    logical_xor bitwise_not bitwise_and bitwise_or bitwise_xor bitwise_left_shift
    bitwise_right_shift __and__ __or__ __xor__ __lshift__ __rshift__ __iand__ __ior__ __ixor__
    __ilshift__ __irshift__ add sub subtract rsub mul multiply div divide true_divide
    floor_divide remainder fmod pow float_power hypot maximum minimum fmax fmin copysign
    nextafter xlogy logaddexp logaddexp2 lerp addcmul addcdiv clamp clamp_min clamp_max clip eq
    ne lt le gt ge greater less greater_equal less_equal not_equal equal isclose allclose where
    masked_fill heaviside gcd lcm ldexp conj conj_physical _conj resolve_conj resolve_neg real
    imag angle""")
#: Activation functions and (log-)softmax.
ACTIVATIONS = _names("""
    relu relu6 leaky_relu elu selu celu gelu silu mish hardswish hardsigmoid hardtanh
    hardshrink softshrink softplus threshold prelu _prelu_kernel glu log_sigmoid
    log_sigmoid_forward softmax _softmax log_softmax _log_softmax _safe_softmax""")
#: Reductions, scans, sorting.
REDUCTIONS = _names("""
    sum mean nansum nanmean prod amax amin aminmax max min argmax argmin std var std_mean
    var_mean norm linalg_vector_norm frobenius_norm logsumexp cumsum cumprod cummax cummin
    logcumsumexp all any count_nonzero median nanmedian sort argsort topk kthvalue msort
    renorm dist cdist _cdist_forward""")
#: Products, convolutions, pooling, resampling, padding, embeddings.
LAYERS = _names("""
    mm bmm matmul addmm addbmm baddbmm addmv mv dot vdot outer ger einsum linear bilinear
    _addmm_activation tensordot cross linalg_cross triu tril diag diagonal diag_embed trace
    conv1d conv2d conv3d convolution _convolution conv_transpose1d conv_transpose2d
    conv_transpose3d avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d
    max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d
    _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    max_unpool2d max_unpool3d pixel_shuffle pixel_unshuffle channel_shuffle
    native_channel_shuffle upsample_nearest1d upsample_nearest2d upsample_nearest3d
    _upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d
    upsample_linear1d upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d
    _upsample_bilinear2d_aa _upsample_bicubic2d_aa grid_sampler grid_sampler_2d
    grid_sampler_3d affine_grid_generator im2col col2im reflection_pad1d reflection_pad2d
    reflection_pad3d replication_pad1d replication_pad2d replication_pad3d constant_pad_nd pad
    _pad_circular _pad_enum embedding embedding_bag _embedding_bag one_hot""")
#: Normalisation and attention (attention's ``dropout_p`` is checked: :data:`SAMPLING`;
#: the fused inference kernels of ``nn.TransformerEncoderLayer``'s fast path are pure, and
#: refused later, with their remedy, as having no derivative).
NORMALIZATION = _names("""
    batch_norm _batch_norm_impl_index native_batch_norm _native_batch_norm_legit
    _native_batch_norm_legit_no_training _native_batch_norm_legit_functional
    _batch_norm_with_update _batch_norm_no_update instance_norm layer_norm native_layer_norm
    group_norm native_group_norm rms_norm _fused_rms_norm scaled_dot_product_attention
    _scaled_dot_product_attention_math _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_efficient_attention _scaled_dot_product_flash_attention
    _transformer_encoder_layer_fwd _native_multi_head_attention _masked_softmax
    _transform_bias_rescale_qkv""")
#: Views, reshaping, joining, splitting, indexing, copies and dtype conversions.
SHAPES = _names("""
    view _unsafe_view reshape reshape_as view_as flatten unflatten squeeze unsqueeze permute
    transpose t swapaxes swapdims movedim moveaxis expand expand_as broadcast_to
    broadcast_tensors repeat repeat_interleave tile flip fliplr flipud roll rot90 narrow
    narrow_copy slice slice_copy select select_copy split split_with_sizes tensor_split chunk
    unsafe_chunk unsafe_split unbind cat concat concatenate stack hstack vstack dstack
    contiguous clone alias detach lift_fresh lift_fresh_copy as_strided _reshape_alias
    view_as_real view_as_complex unfold index index_select gather scatter scatter_add
    scatter_reduce index_put _index_put_impl index_add index_copy index_fill masked_scatter
    masked_select take take_along_dim nonzero nonzero_static argwhere searchsorted bucketize
    copy _to_copy to type_as _local_scalar_dense item numel size stride dim sym_size
    sym_stride sym_numel sym_storage_offset _shape_as_tensor zeros zeros_like ones ones_like
    full full_like empty empty_like empty_strided new_zeros new_ones new_full new_empty
    new_empty_strided scalar_tensor arange linspace logspace eye fill zero _assert_scalar
    _assert_async _assert_tensor_metadata sym_constrain_range sym_constrain_range_for_size
    _functional_sym_constrain_range _functional_sym_constrain_range_for_size""")
#: Operators that draw from the random generator, with the argument (name, position in the
#: schema) that, at the given value, keeps them from drawing; ``None``: they always draw.
SAMPLING: dict[str, tuple[str, int, object] | None] = {
    "dropout": ("train", 2, False), "feature_dropout": ("train", 2, False),
    "alpha_dropout": ("train", 2, False), "feature_alpha_dropout": ("train", 2, False),
    "native_dropout": ("train", 2, False),
    "scaled_dot_product_attention": ("dropout_p", 4, 0.0),
    "bernoulli": None, "rand": None, "rand_like": None, "randn": None, "randn_like": None,
    "randint": None, "randint_like": None, "randperm": None, "normal": None, "uniform": None,
    "exponential": None, "geometric": None, "cauchy": None, "log_normal": None, "random": None,
    "poisson": None, "multinomial": None, "rrelu": None, "rrelu_with_noise": None,
    "fractional_max_pool2d": None, "fractional_max_pool3d": None, "_fused_dropout": None,
    "_standard_gamma": None, "binomial": None,
}
#: Everything above: the pure ATen operators (by packet).
ATEN = POINTWISE | ACTIVATIONS | REDUCTIONS | LAYERS | NORMALIZATION | SHAPES
#: TorchScript's own ATen operators on ints, floats, strings, lists and dicts (``torch.len``,
#: ``torch.append``, ``torch.format``), which scripted code calls; ``warn`` raises a Python
#: warning (attrcert silences those while the model runs; ``print`` is refused).
TORCHSCRIPT_ATEN = _names("""
    len append extend insert pop clear copy __getitem__ _set_item __contains__ __is__ __isnot__
    __not__ list dict keys values items get setdefault format str Int Float Bool
    ScalarImplicit IntImplicit FloatImplicit ComplexImplicit Complex floordiv __range_length
    __derive_index __round_to_zero_floordiv __interpolate __upsample __upsample_bilinear
    tensor device warn is_floating_point is_complex is_contiguous __upsample_nearest""")
#: TorchScript primitives (``ops.prim.X``) that read properties or convert scalars.
TORCHSCRIPT_PRIM = _names("""
    NumToTensor RaiseException device dtype layout requires_grad min max abs
    unchecked_unwrap_optional is_cuda is_cpu is_xpu is_mps is_meta is_quantized is_sparse
    is_nested is_mkldnn data itemsize nbytes EnumName EnumValue""")
#: The ``prims`` operators (torch's primitive decompositions) that compute on tensors.
PRIMS = _names("""
    abs acos acosh asin asinh atan atanh atan2 cbrt ceil floor round trunc sign signbit neg
    reciprocal sqrt rsqrt exp exp2 expm1 log log2 log10 log1p sin cos tan sinh cosh tanh erf
    erfc erf_inv lgamma digamma add sub mul div remainder fmod pow maximum minimum fmax fmin
    eq ne lt le gt ge bitwise_and bitwise_or bitwise_xor bitwise_not shift_left
    shift_right_arithmetic where sum prod amax amin var xor_sum convert_element_type
    broadcast_in_dim view_of view_of_dtype squeeze reshape collapse_view collapse split_dim
    transpose cat rev as_strided clone empty empty_strided empty_permuted full full_like fill
    iota scalar_tensor item copy_strided copy_to device_put conj conj_physical real imag
    nextafter hypot igamma igammac isfinite gcd""")


def sampling(name: str) -> bool:
    """Whether the ATen operator ``name`` (packet, in-place variants too) draws randomness."""
    stem = name[:-1] if _inplace(name) else name
    return stem in SAMPLING


def inactive_when(name: str) -> tuple[str, int, object] | None:
    """For a sampling operator that can be told not to draw: (argument, position, value)."""
    return SAMPLING.get(name[:-1] if _inplace(name) else name)


def _inplace(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__") and len(name) > 1


def aten_allowed(name: str, *, torchscript: bool = False) -> bool:
    """Whether ATen operator packet ``name`` is a pure tensor operator (its in-place variant
    ``name_`` too); with ``torchscript``, TorchScript's scalar and container operators too.
    Sampling operators are not included: see :func:`sampling`."""
    if name in ATEN or (torchscript and name in TORCHSCRIPT_ATEN):
        return True
    return _inplace(name) and name[:-1] in ATEN
