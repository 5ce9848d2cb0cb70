// vimdeploy: inline-PTX building blocks shared by the CUDA kernels (internal header): async
// global -> shared copies, and the fp16 tensor-core tile product with its fragment loads.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace vimdeploy
{

// 16 bytes global -> shared without registers (sm_80+); valid == false writes 16 zero bytes
// (src must still be a valid address).
__device__ __forceinline__ void cpAsync16(void* dst, void const* src, bool valid)
{
    unsigned const d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cpAsyncWait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t pack(__half lo, __half hi)
{
    uint32_t v;
    __half2 const h = __halves2half2(lo, hi);
    memcpy(&v, &h, 4);
    return v;
}

// d = a * b + c: one 16x8x16 tile, fp16 inputs, fp32 accumulators (mma.sync, sm_80+).
// Fragment layouts (PTX ISA, mma.m16n8k16 .f16), g = lane / 4, q = lane % 4: A (16 x 16):
// a[0] = row g, cols 2q and 2q+1; a[1] = row g+8, same cols; a[2], a[3] = the same rows,
// cols + 8. B (16 x 8): b[0] = rows 2q, 2q+1 of col g; b[1] = rows + 8. D (16 x 8): d[0],
// d[1] = row g, cols 2q, 2q+1; d[2], d[3] = row g+8.
__device__ __forceinline__ void mma(float (&d)[4], uint32_t const (&a)[4], uint32_t const (&b)[2], float c0, float c1,
    float c2, float c3)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
}
__device__ __forceinline__ void mma(float (&d)[4], uint32_t const (&a)[4], uint32_t const (&b)[2])
{
    mma(d, a, b, d[0], d[1], d[2], d[3]);
}

// Four 8x8 fp16 matrices from shared memory: lanes 8i..8i+7 give the row addresses of matrix
// i (16 bytes each), and r[i] is a lane's fragment of matrix i (row lane / 4, cols
// 2 (lane % 4), +1): with rows of A (16 x 16, row-major) as lane % 16 at col 8 (lane / 16),
// r = {a[0], a[1], a[2], a[3]}; with B stored transposed (n-major, k contiguous), the rows
// of n-tile j at cols k0 and k0 + 8, then of tile j + 1, r = {b_j[0], b_j[1], b_j+1[0], b_j+1[1]}.
__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], void const* row)
{
    unsigned const s = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

} // namespace vimdeploy
