/*
 * vimdeploy: numeric constants that the CUDA and the CPU kernel share, so that both compute
 * the same function with the same constants in the same order. Plain macros: usable from C,
 * host C++ and CUDA device code alike.
 */
#ifndef VIMDEPLOY_SCAN_NUMERIC_H
#define VIMDEPLOY_SCAN_NUMERIC_H

#define VIMDEPLOY_LOG2E 1.4426950408889634f

/*
 * mamba_ssm's softplus(v) = v if v > 20 else log1p(exp(v)) is computed as
 *   max(v, 0) + log1p(w),  w = exp(-|v|) in (0, 1],  log1p(w) = w * q(w),
 * q a degree-8 Chebyshev fit of log1p(w) / w on [0, 1] (rel. error 2.5e-7 in fp32). The
 * coefficients, highest degree first, in Horner order: q = c[0]; q = q * w + c[i], i = 1..8
 * (each step one fused multiply-add in both kernels).
 */
#define VIMDEPLOY_SOFTPLUS_LOG1P_DEGREE 8
#define VIMDEPLOY_SOFTPLUS_LOG1P_COEFFS                                                                \
    5.1261024e-3f, -2.9074065e-2f, 7.7516086e-2f, -1.3602248e-1f, 1.9076881e-1f, -2.4835399e-1f,      \
        3.3318120e-1f, -4.9999446e-1f, 9.9999994e-1f
/* mamba_ssm's threshold: above it softplus(v) = v. */
#define VIMDEPLOY_SOFTPLUS_THRESHOLD 20.0f

#endif /* VIMDEPLOY_SCAN_NUMERIC_H */
