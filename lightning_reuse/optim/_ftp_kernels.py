"""Triton kernels of the fused FTP path (see :mod:`lightning_reuse.optim._ftp_fused` for the engine).

Tian et al., "Fast Trainable Projection for Robust Fine-Tuning", NeurIPS 2023. Every kernel reads the
parameters, gradients and (Adam path) the base optimizer's moments in place through tables of data pointers,
and the FTP state from the engine's flat buffers; no atomics, so results are deterministic.

Two ways a step runs on these kernels:

- around any base optimizer (two passes): ``_hgrad_chunks`` and ``_radius_tensors`` before the base step,
  ``_project_rows`` and ``_clip_tensors`` after it. Bytes per fp32 element: 8 before, 16 after, plus the base
  step's own (28 for AdamW): 52;
- Adam/AdamW base (one pass): ``_hgrad_chunks``, ``_radius_tensors`` (which also advances the Adam step
  counters), then ``_adam_project_rows`` runs the Adam update
  *and* the projection while the row is in registers (read p, g, m, v, anchor; write p, m, v, direction:
  36 bytes), then ``_clip_tensors``. 44 bytes per element in all.

Both read FTP's step counter from the device (``_clip_tensors`` advances it): no value is read on the host and
no per-step scalar is baked into a launch, so a step can be captured in a CUDA graph and replayed (with a
capturable base optimizer).

``TRITON_INTERPRET=1`` runs the kernels on CPU tensors (slowly), which the engine allows for debugging.
"""

from __future__ import annotations

import os

try:  # pragma: no cover - exercised on CUDA machines (or under the Triton interpreter) only
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - CPU-only installs
    triton = tl = None
    HAS_TRITON = False

__all__ = ["CHUNK", "HAS_TRITON", "INTERPRET", "WARM", "triton"]

INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
CHUNK = 4096  # elements per program of the hyper-gradient pre-pass (whatever the rows)
WARM = 2  # per-tensor mode of a tensor with a gradient and FTP state; 0: no gradient this step (untouched)


if HAS_TRITON:  # pragma: no cover - compiled and run on CUDA machines only

    @triton.jit
    def _one_minus_pow(log_b, t):
        """``1 - b**t`` from ``log(b)`` without the cancellation of ``1 - exp(x)`` for small ``|x|``."""
        x = t * log_b
        series = -x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x / 720.0)))))
        return tl.where(x > -0.1, series, 1.0 - tl.exp(x))

    @triton.jit
    def _row_scales(gamma, n):
        """The projection's ``min(gamma / n, 1)`` (exactly 1 where the row is inside the ball) and ``1 / n``."""
        return tl.where(gamma >= n, 1.0, tl.div_rn(gamma, n)), tl.div_rn(n * 0.0 + 1.0, n)

    @triton.jit
    def _store_direction(at, x, mask, DIR_BF16: tl.constexpr):
        """Store ``x`` (fp32) at ``at``; ``DIR_BF16``: rounded to nearest even bf16 bit by bit, as torch's cast.

        (Written out because Triton's interpreter truncates on a cast to bf16 while the GPU rounds.)
        """
        if DIR_BF16:
            bits = x.to(tl.uint32, bitcast=True)
            bits += 0x7FFF + ((bits >> 16) & 1)
            tl.store(at.to(tl.pointer_type(tl.uint16)), (bits >> 16).to(tl.uint16), mask=mask)
        else:
            tl.store(at, x, mask=mask)

    @triton.jit
    def _project_long_row(
        p_base, a_base, d_base, length, scale, inv_n, BLOCK: tl.constexpr, DIR_BF16: tl.constexpr
    ):
        """Second pass over a row longer than a block: ``p = p' + (scale - 1) c`` and the direction ``c / n``."""
        offs = tl.arange(0, BLOCK)
        for start in range(0, length, BLOCK):
            idx = start + offs
            mask = idx < length
            p = tl.load(p_base + idx, mask=mask, other=0.0)
            c = p - tl.load(a_base + idx, mask=mask, other=0.0)
            tl.store(p_base + idx, p + c * (scale - 1.0), mask=mask)
            _store_direction(d_base + idx, c * inv_n, mask, DIR_BF16)

    @triton.jit
    def _hgrad_chunks(
        chunk_tensor_ptr,
        chunk_local_ptr,
        chunk_flat_ptr,
        chunk_len_ptr,
        mode_ptr,
        grad_ptrs,
        dir_ptr,
        h_chunk_ptr,
        BLOCK: tl.constexpr,
    ):
        """One chunk's share of ``h = sum(g_t * c_prev / n_prev)`` (the direction is stored as ``c / n``)."""
        c = tl.program_id(0)
        ti = tl.load(chunk_tensor_ptr + c)
        if tl.load(mode_ptr + ti) == 2:
            length = tl.load(chunk_len_ptr + c)
            offs = tl.arange(0, BLOCK)
            mask = offs < length
            g_base = tl.load(grad_ptrs + ti).to(tl.pointer_type(tl.float32)) + tl.load(chunk_local_ptr + c)
            g = tl.load(g_base + offs, mask=mask, other=0.0)
            d = tl.load(dir_ptr + tl.load(chunk_flat_ptr + c) + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(h_chunk_ptr + c, tl.sum(g * d, axis=0))

    @triton.jit
    def _radius_tensors(
        mode_ptr,
        chunk_begin_ptr,
        chunk_end_ptr,
        h_chunk_ptr,
        gamma_ptr,
        m_ptr,
        v_ptr,
        k,
        mu,
        t_ptr,
        step_ptrs,
        BLOCK: tl.constexpr,
        ADVANCE_STEPS: tl.constexpr,
    ):
        """The radius Adam of one tensor, at FTP's step ``t = t_ptr[0] + 1`` (advanced by ``_clip_tensors``).

        ``ADVANCE_STEPS`` (the one-pass Adam path): the tensor's Adam ``step`` (``step_ptrs[i]``) is advanced
        here, before ``_adam_project_rows`` reads it.
        """
        i = tl.program_id(0)
        if tl.load(mode_ptr + i) == 2:
            t = tl.load(t_ptr) + 1.0
            bc1 = _one_minus_pow(-0.10536051565782628, t)  # log(0.9)
            bc2 = _one_minus_pow(-0.0010005003335835335, t)  # log(0.999)
            if ADVANCE_STEPS:
                step_ptr = tl.load(step_ptrs + i).to(tl.pointer_type(tl.float32))
                tl.store(step_ptr, tl.load(step_ptr) + 1.0)
            cb = tl.load(chunk_begin_ptr + i)
            ce = tl.load(chunk_end_ptr + i)
            offs = tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(cb, ce, BLOCK):
                idx = start + offs
                acc += tl.load(h_chunk_ptr + idx, mask=idx < ce, other=0.0)
            h = tl.sum(acc, axis=0)
            h = tl.where(h > 0, h * k, h)
            m = tl.load(m_ptr + i) * 0.9 + h * 0.1
            v = tl.load(v_ptr + i) * 0.999 + (h * h) * 0.001
            denom = tl.sqrt_rn(tl.div_rn(v, bc2)) + 1e-8
            gamma = tl.load(gamma_ptr + i) - mu * tl.div_rn(tl.div_rn(m, bc1), denom)
            tl.store(m_ptr + i, m)
            tl.store(v_ptr + i, v)
            tl.store(gamma_ptr + i, gamma)

    @triton.jit
    def _project_rows(
        rows_ptr,
        row_tensor_ptr,
        row_local_ptr,
        row_flat_ptr,
        row_len_ptr,
        mode_ptr,
        param_ptrs,
        anchor_ptr,
        dir_ptr,
        gamma_ptr,
        n_row_ptr,
        BLOCK: tl.constexpr,
        SINGLE: tl.constexpr,
        DIR_BF16: tl.constexpr,
    ):
        """After the base step: ``c = p' - p0``, the row norm ``n``, ``p = p0 + min(gamma / n, 1) c``, ``c / n``."""
        r = tl.load(rows_ptr + tl.program_id(0))
        ti = tl.load(row_tensor_ptr + r)
        if tl.load(mode_ptr + ti) != 0:
            length = tl.load(row_len_ptr + r)
            flat = tl.load(row_flat_ptr + r)
            p_base = tl.load(param_ptrs + ti).to(tl.pointer_type(tl.float32)) + tl.load(row_local_ptr + r)
            a_base = anchor_ptr + flat
            d_base = dir_ptr + flat
            offs = tl.arange(0, BLOCK)
            if SINGLE:  # the row fits in one block: read once, keep it in registers
                mask = offs < length
                p = tl.load(p_base + offs, mask=mask, other=0.0)
                c = p - tl.load(a_base + offs, mask=mask, other=0.0)
                n = tl.sum(tl.abs(c), axis=0) + 1e-8
                tl.store(n_row_ptr + r, n)
                gamma = tl.maximum(tl.load(gamma_ptr + ti), 1e-8)
                scale, inv_n = _row_scales(gamma, n)
                tl.store(p_base + offs, p + c * (scale - 1.0), mask=mask)
                _store_direction(d_base + offs, c * inv_n, mask, DIR_BF16)
            else:  # a long row: one loop for the norm, one for the projection (mostly from L2)
                acc = tl.zeros([BLOCK], dtype=tl.float32)
                for start in range(0, length, BLOCK):
                    idx = start + offs
                    mask = idx < length
                    p = tl.load(p_base + idx, mask=mask, other=0.0)
                    a = tl.load(a_base + idx, mask=mask, other=0.0)
                    acc += tl.abs(p - a)
                n = tl.sum(acc, axis=0) + 1e-8
                tl.store(n_row_ptr + r, n)
                gamma = tl.maximum(tl.load(gamma_ptr + ti), 1e-8)
                scale, inv_n = _row_scales(gamma, n)
                _project_long_row(p_base, a_base, d_base, length, scale, inv_n, BLOCK, DIR_BF16)

    @triton.jit
    def _adam_math(
        p,
        g,
        m,
        v,
        lr,
        wd,
        step,
        beta1,
        beta2,
        log_beta1,
        log_beta2,
        eps,
        DECOUPLED: tl.constexpr,
        EXACT: tl.constexpr,
    ):
        """torch's Adam (``DECOUPLED``: AdamW) update of one block, as its fused kernel computes it.

        ``EXACT``: IEEE-rounded square root and divisions per element, as torch's kernel; else the fast
        approximate ones (a few ulp) with the bias corrections folded into one factor per row.
        """
        if DECOUPLED:
            p = p * (1.0 - lr * wd)
        else:
            g = g + wd * p
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        step_size = tl.div_rn(lr, _one_minus_pow(log_beta1, step))
        bc2_sqrt = tl.sqrt_rn(_one_minus_pow(log_beta2, step))
        if EXACT:
            denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
            p = p - tl.div_rn(step_size * m, denom)
        else:
            p = p - (step_size * m) / (tl.sqrt(v) * (1.0 / bc2_sqrt) + eps)
        return p, m, v

    @triton.jit
    def _adam_block(
        p_at, g_at, m_at, v_at, mask, lr, wd, step, beta1, beta2, log_beta1, log_beta2, eps,
        DECOUPLED: tl.constexpr, EXACT: tl.constexpr,
    ):  # fmt: skip
        """Load a block of ``p, g, m, v`` and return its Adam update ``(p', m', v')`` (see ``_adam_math``)."""
        return _adam_math(
            tl.load(p_at, mask=mask, other=0.0),
            tl.load(g_at, mask=mask, other=0.0),
            tl.load(m_at, mask=mask, other=0.0),
            tl.load(v_at, mask=mask, other=0.0),
            lr, wd, step, beta1, beta2, log_beta1, log_beta2, eps, DECOUPLED, EXACT,
        )  # fmt: skip

    @triton.jit
    def _adam_project_rows(
        rows_ptr,
        n_ids,
        row_tensor_ptr,
        row_local_ptr,
        row_flat_ptr,
        row_len_ptr,
        mode_ptr,
        param_ptrs,
        grad_ptrs,
        m_ptrs,
        v_ptrs,
        step_ptrs,
        lr_ptr,
        wd_ptr,
        anchor_ptr,
        dir_ptr,
        gamma_ptr,
        n_row_ptr,
        beta1,
        beta2,
        log_beta1,
        log_beta2,
        eps,
        DECOUPLED: tl.constexpr,
        EXACT: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
        DIR_BF16: tl.constexpr,
    ):
        """Adam update and projection of ``ROWS`` short rows (each <= ``BLOCK`` long) per program, in registers."""
        slot = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        valid = slot < n_ids
        r = tl.load(rows_ptr + slot, mask=valid, other=0)
        ti = tl.load(row_tensor_ptr + r, mask=valid, other=0)
        on = valid & (tl.load(mode_ptr + ti, mask=valid, other=0) == 2)
        length = tl.load(row_len_ptr + r, mask=on, other=0)
        local = tl.load(row_local_ptr + r, mask=on, other=0)
        flat = tl.load(row_flat_ptr + r, mask=on, other=0)
        offs = tl.arange(0, BLOCK)[None, :]
        mask = offs < length[:, None]
        p_at = (tl.load(param_ptrs + ti, mask=on, other=0).to(tl.pointer_type(tl.float32)) + local)[
            :, None
        ] + offs
        g_at = (tl.load(grad_ptrs + ti, mask=on, other=0).to(tl.pointer_type(tl.float32)) + local)[
            :, None
        ] + offs
        m_at = (tl.load(m_ptrs + ti, mask=on, other=0).to(tl.pointer_type(tl.float32)) + local)[
            :, None
        ] + offs
        v_at = (tl.load(v_ptrs + ti, mask=on, other=0).to(tl.pointer_type(tl.float32)) + local)[
            :, None
        ] + offs
        step = tl.load(
            tl.load(step_ptrs + ti, mask=on, other=0).to(tl.pointer_type(tl.float32)), mask=on, other=1.0
        )
        lr = tl.load(lr_ptr + ti, mask=on, other=0.0)[:, None]
        wd = tl.load(wd_ptr + ti, mask=on, other=0.0)[:, None]
        a = tl.load(anchor_ptr + flat[:, None] + offs, mask=mask, other=0.0)
        p, m, v = _adam_block(
            p_at, g_at, m_at, v_at, mask, lr, wd, step[:, None], beta1, beta2, log_beta1, log_beta2, eps,
            DECOUPLED, EXACT,
        )  # fmt: skip
        c = tl.where(mask, p - a, 0.0)
        n = tl.sum(tl.abs(c), axis=1) + 1e-8
        tl.store(n_row_ptr + r, n, mask=on)
        gamma = tl.maximum(tl.load(gamma_ptr + ti, mask=on, other=1.0), 1e-8)
        scale, inv_n = _row_scales(gamma, n)
        scale, inv_n = scale[:, None], inv_n[:, None]
        tl.store(p_at, p + c * (scale - 1.0), mask=mask)
        tl.store(m_at, m, mask=mask)
        tl.store(v_at, v, mask=mask)
        _store_direction(dir_ptr + flat[:, None] + offs, c * inv_n, mask, DIR_BF16)

    @triton.jit
    def _adam_project_row(
        rows_ptr,
        row_tensor_ptr,
        row_local_ptr,
        row_flat_ptr,
        row_len_ptr,
        mode_ptr,
        param_ptrs,
        grad_ptrs,
        m_ptrs,
        v_ptrs,
        step_ptrs,
        lr_ptr,
        wd_ptr,
        anchor_ptr,
        dir_ptr,
        gamma_ptr,
        n_row_ptr,
        beta1,
        beta2,
        log_beta1,
        log_beta2,
        eps,
        DECOUPLED: tl.constexpr,
        EXACT: tl.constexpr,
        BLOCK: tl.constexpr,
        SINGLE: tl.constexpr,
        DIR_BF16: tl.constexpr,
    ):
        """Adam update and projection of one row: in registers (``SINGLE``), or in two loops for a long row.

        A long row: the Adam update and the norm in one loop (``p'`` stored), the projection in a second.
        """
        r = tl.load(rows_ptr + tl.program_id(0))
        ti = tl.load(row_tensor_ptr + r)
        if tl.load(mode_ptr + ti) == 2:
            length = tl.load(row_len_ptr + r)
            local = tl.load(row_local_ptr + r)
            flat = tl.load(row_flat_ptr + r)
            p_base = tl.load(param_ptrs + ti).to(tl.pointer_type(tl.float32)) + local
            g_base = tl.load(grad_ptrs + ti).to(tl.pointer_type(tl.float32)) + local
            m_base = tl.load(m_ptrs + ti).to(tl.pointer_type(tl.float32)) + local
            v_base = tl.load(v_ptrs + ti).to(tl.pointer_type(tl.float32)) + local
            a_base = anchor_ptr + flat
            d_base = dir_ptr + flat
            step = tl.load(tl.load(step_ptrs + ti).to(tl.pointer_type(tl.float32)))
            lr = tl.load(lr_ptr + ti)
            wd = tl.load(wd_ptr + ti)
            gamma = tl.maximum(tl.load(gamma_ptr + ti), 1e-8)
            offs = tl.arange(0, BLOCK)
            if SINGLE:
                mask = offs < length
                p, m, v = _adam_block(
                    p_base + offs, g_base + offs, m_base + offs, v_base + offs, mask, lr, wd, step, beta1, beta2,
                    log_beta1, log_beta2, eps, DECOUPLED, EXACT,
                )  # fmt: skip
                c = tl.where(mask, p - tl.load(a_base + offs, mask=mask, other=0.0), 0.0)
                n = tl.sum(tl.abs(c), axis=0) + 1e-8
                tl.store(n_row_ptr + r, n)
                scale, inv_n = _row_scales(gamma, n)
                tl.store(p_base + offs, p + c * (scale - 1.0), mask=mask)
                tl.store(m_base + offs, m, mask=mask)
                tl.store(v_base + offs, v, mask=mask)
                _store_direction(d_base + offs, c * inv_n, mask, DIR_BF16)
            else:
                acc = tl.zeros([BLOCK], dtype=tl.float32)
                for start in range(0, length, BLOCK):
                    idx = start + offs
                    mask = idx < length
                    p, m, v = _adam_block(
                        p_base + idx, g_base + idx, m_base + idx, v_base + idx, mask, lr, wd, step, beta1, beta2,
                        log_beta1, log_beta2, eps, DECOUPLED, EXACT,
                    )  # fmt: skip
                    acc += tl.where(mask, tl.abs(p - tl.load(a_base + idx, mask=mask, other=0.0)), 0.0)
                    tl.store(p_base + idx, p, mask=mask)
                    tl.store(m_base + idx, m, mask=mask)
                    tl.store(v_base + idx, v, mask=mask)
                n = tl.sum(acc, axis=0) + 1e-8
                tl.store(n_row_ptr + r, n)
                scale, inv_n = _row_scales(gamma, n)
                _project_long_row(p_base, a_base, d_base, length, scale, inv_n, BLOCK, DIR_BF16)

    @triton.jit
    def _clip_tensors(mode_ptr, row_begin_ptr, row_end_ptr, n_row_ptr, gamma_ptr, t_ptr, BLOCK: tl.constexpr):
        """Clip each radius to ``[1e-8, max(n)]``; program 0 advances FTP's step counter ``t_ptr[0]``."""
        i = tl.program_id(0)
        if i == 0:
            tl.store(t_ptr, tl.load(t_ptr) + 1.0)
        if tl.load(mode_ptr + i) != 0:
            rb = tl.load(row_begin_ptr + i)
            re = tl.load(row_end_ptr + i)
            offs = tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(rb, re, BLOCK):
                idx = start + offs
                acc = tl.maximum(acc, tl.load(n_row_ptr + idx, mask=idx < re, other=0.0))
            max_n = tl.max(acc, axis=0)
            gamma = tl.minimum(tl.maximum(tl.load(gamma_ptr + i), 1e-8), max_n)
            tl.store(gamma_ptr + i, gamma)
