# flowpg: PGXS build.  `make && make install` as root; tests: test/run.
EXTENSION = flowpg
MODULE_big = flowpg
OBJS = \
	src/flowpg.o \
	src/control.o \
	src/launcher.o \
	src/worker.o \
	src/decode.o \
	src/compile.o \
	src/operators.o \
	src/state.o \
	src/checkpoint.o \
	src/writer.o \
	src/savepoint.o \
	src/adopt.o \
	src/catalog.o \
	src/api.o
DATA = flowpg--0.1.sql
PGFILEDESC = "flowpg - stateful stream processing inside PostgreSQL"

PG_CFLAGS = -Wall -Werror -Wmissing-prototypes
PG_CPPFLAGS = -I$(srcdir)/src

# No JIT bitcode: fewer build dependencies, and nothing here is JIT-compiled.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on every header: the shared-memory structs are in them
$(OBJS): $(wildcard src/*.h)
