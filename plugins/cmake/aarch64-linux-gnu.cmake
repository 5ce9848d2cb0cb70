# Cross build for 64-bit ARM Linux with Debian's g++-aarch64-linux-gnu; tests run under
# qemu-user-static (ctest uses CMAKE_CROSSCOMPILING_EMULATOR). Use with -DVIMDEPLOY_CPU_ONLY=ON:
#   cmake -S plugins -B build/aarch64 -DVIMDEPLOY_CPU_ONLY=ON \
#         -DCMAKE_TOOLCHAIN_FILE=plugins/cmake/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Advanced SIMD (NEON) is part of every ARMv8-A core; named so that the vector path is chosen
# explicitly rather than left to the compiler's default.
set(CMAKE_CXX_FLAGS_INIT "-march=armv8-a+simd")
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
find_program(VIMDEPLOY_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(VIMDEPLOY_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${VIMDEPLOY_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu)
endif()
