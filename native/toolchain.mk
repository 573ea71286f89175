# The C compiler and the triple it targets, for native/Makefile and examples/c/Makefile (one place;
# the Python side is native/buildcfg.py). TARGET=<triple> picks <triple>-gcc unless CC is given;
# TRIPLE is what the compiler says it targets (build directories are named after it).
ifeq ($(origin CC),default)
ifdef TARGET
CC := $(TARGET)-gcc
else
CC := cc
endif
endif
TRIPLE := $(shell $(CC) -dumpmachine 2>/dev/null)
ifeq ($(TRIPLE),)
$(error cannot run the C compiler '$(CC)'; install it (Debian: apt-get install gcc-$(or $(TARGET),<triple>)) or set CC=)
endif
