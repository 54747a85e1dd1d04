// Shim: the emulator (sfemu.h) stands in for the CUDA toolkit header of this name.
#pragma once
#include "sfemu.h"
