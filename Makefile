# fcgiwatch: make test | make check-all-pythons | make install | make bench
PYTHON ?= python3
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR ?=

.PHONY: test check-all-pythons install bench

# The README's test command; runs as root (tests switch to user nobody).
test:
	$(PYTHON) test_fcgiwatch.py

# The whole suite on every CPython 3.x that pyenv has on this machine.
check-all-pythons:
	@root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); \
	found=0; failed=""; \
	for py in "$$root"/versions/3.*/bin/python3; do \
	  [ -x "$$py" ] || continue; \
	  found=$$((found + 1)); \
	  echo "== $$("$$py" --version 2>&1) ($$py)"; \
	  "$$py" test_fcgiwatch.py || failed="$$failed $$py"; \
	done; \
	if [ "$$found" = 0 ]; then \
	  echo "check-all-pythons: no interpreters under $$root/versions"; \
	  exit 1; \
	fi; \
	if [ -n "$$failed" ]; then echo "FAILED on:$$failed"; exit 1; fi; \
	echo "check-all-pythons: all $$found interpreters passed"

# Installs the program as LIBDIR/fcgiwatch.py with its bytecode compiled,
# and bin/fcgiwatch, three lines that import it, run by the Python that
# compiled it (PYTHON, as a path): Python caches the bytecode
# of a module it imports, never of a script it runs, and compiling this file
# is most of what a --status costs.  The example config goes to
# SYSCONFDIR/fcgiwatch.conf only where none exists yet.
LIBDIR ?= $(PREFIX)/lib/fcgiwatch
install:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LIBDIR) $(DESTDIR)$(SYSCONFDIR)
	install -m 644 fcgiwatch.py $(DESTDIR)$(LIBDIR)/fcgiwatch.py
	$(PYTHON) -m py_compile $(DESTDIR)$(LIBDIR)/fcgiwatch.py
	printf '%s\n' "#!$$(command -v $(PYTHON))" \
	  '# fcgiwatch: the program is $(LIBDIR)/fcgiwatch.py, imported.' \
	  'import sys; sys.path.insert(0, "$(LIBDIR)")' \
	  'from fcgiwatch import main; sys.exit(main())' \
	  > $(DESTDIR)$(PREFIX)/bin/fcgiwatch
	chmod 755 $(DESTDIR)$(PREFIX)/bin/fcgiwatch
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/fcgiwatch.conf ]; then \
	  echo "kept the existing $(DESTDIR)$(SYSCONFDIR)/fcgiwatch.conf"; \
	else \
	  install -m 644 fcgiwatch.conf.example \
	    $(DESTDIR)$(SYSCONFDIR)/fcgiwatch.conf; \
	fi

bench:
	$(PYTHON) bench/bench.py
