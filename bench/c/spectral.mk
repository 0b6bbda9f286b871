# C harness of the spectra family's hot loops: make -f bench/c/spectral.mk run [ARGS="n m reps"]
CC ?= gcc
CFLAGS ?= -O3 -fopenmp -fno-math-errno -fassociative-math -fno-signed-zeros -fno-trapping-math
ARGS ?= 1024 1024 200
BIN := build/spectral_harness

$(BIN): bench/c/spectral_harness.c fastopt/spectral/_spectral_kernels.h fastopt/spectral/_spectral_kernels_t.h fastopt/_simd.h
	mkdir -p build && $(CC) $(CFLAGS) -Ifastopt -o $@ $< -lm

run: $(BIN)
	./$(BIN) $(ARGS)

clean:
	rm -f $(BIN)

.PHONY: run clean
