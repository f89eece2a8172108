"""One spelling of flags on every command line: words joined by underscores (`--data_format`), as the
released CLI spells its flags; the hyphenated spelling (`--data-format`) is accepted too."""
import argparse
import sys


def underscored(token):
    """'--data-format=NCHW' -> '--data_format=NCHW'; values, short options and '--' unchanged."""
    if not token.startswith('--') or token == '--':
        return token
    name, equals, value = token.partition('=')
    return '--' + name[2:].replace('-', '_') + equals + value


def underscored_flags(tokens):
    """The command-line tokens with every long flag spelled with underscores, up to a '--' separator."""
    tokens = list(tokens)
    end = tokens.index('--') if '--' in tokens else len(tokens)
    return [underscored(token) for token in tokens[:end]] + tokens[end:]


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags, declared with underscores, also take the hyphenated spelling."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(underscored_flags(sys.argv[1:] if args is None else args), namespace)
