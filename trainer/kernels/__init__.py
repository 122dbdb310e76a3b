"""Compiled layer kernels: our C++ CPU kernel and the guarded difflogic CUDA binding."""
