package StructuredFields;

=pod

=head1 NAME

StructuredFields - a strict parser of RFC 8941 Structured Field Values

Core Perl only.  Follows the parsing algorithms of RFC 8941 section 4.2
to the letter: anything they would fail on dies, with the offset.

=head1 FUNCTIONS (exportable)

  sf_list($text)   a List: an arrayref of members, each
                   { value => BARE or [ inner items ], params => PARAMS }
  sf_item($text)   an Item: { value => BARE, params => PARAMS }
  sf_dict($text)   a Dictionary: an arrayref of [ key, member ]

  BARE is { type => 'integer' | 'decimal' | 'string' | 'token' |
  'binary' | 'boolean', value => ... }; PARAMS an arrayref of
  [ key, BARE ] in order (a repeated key keeps its place, takes the
  last value, as section 4.2.3.2 says).

  sf_params_hash($member)   { key => plain value } of a member's params

=cut

use strict;
use warnings;

use Exporter qw(import);
use MIME::Base64 qw(decode_base64);

our @EXPORT_OK = qw(sf_list sf_item sf_dict sf_params_hash);

sub _fail {
    my ($s, $why) = @_;
    die sprintf "SF parse error at offset %d: %s in \"%s\"\n",
        pos($$s) // 0, $why, $$s;
}

# 4.2: leading and trailing SP are discarded; OWS is SP / HTAB
sub _top {
    my ($text, $parse) = @_;
    die "SF parse error: undefined field value\n" unless defined $text;
    die "SF parse error: non-ASCII or control byte\n"
        if $text =~ /[^\x20-\x7e\t]/;
    my $s = $text;
    $s =~ s/^ +//;
    $s =~ s/ +$//;
    pos($s) = 0;
    my $v = $parse->(\$s);
    _fail(\$s, 'trailing characters') if pos($s) != length $s;
    return $v;
}

sub sf_list { return _top($_[0], \&_list) }
sub sf_item { return _top($_[0], \&_item) }
sub sf_dict { return _top($_[0], \&_dict) }

sub _ows { ${ $_[0] } =~ /\G[ \t]*/gc }

# 4.2.1
sub _list {
    my ($s) = @_;
    my @members;
    while (pos($$s) < length $$s) {
        push @members, _item_or_inner($s);
        _ows($s);
        return \@members if pos($$s) == length $$s;
        _fail($s, 'expected ","') unless $$s =~ /\G,/gc;
        _ows($s);
        _fail($s, 'trailing ","') if pos($$s) == length $$s;
    }
    return \@members;
}

# 4.2.2
sub _dict {
    my ($s) = @_;
    my (@dict, %at);
    while (pos($$s) < length $$s) {
        my $key = _key($s);
        my $member;
        if ($$s =~ /\G=/gc) {
            $member = _item_or_inner($s);
        } else {
            $member = { value => { type => 'boolean', value => 1 },
                        params => _params($s) };
        }
        if (exists $at{$key}) {
            $dict[ $at{$key} ][1] = $member;
        } else {
            $at{$key} = @dict;
            push @dict, [ $key, $member ];
        }
        _ows($s);
        return \@dict if pos($$s) == length $$s;
        _fail($s, 'expected ","') unless $$s =~ /\G,/gc;
        _ows($s);
        _fail($s, 'trailing ","') if pos($$s) == length $$s;
    }
    return \@dict;
}

sub _item_or_inner {
    my ($s) = @_;
    return _inner($s) if $$s =~ /\G(?=\()/gc;
    return _item($s);
}

# 4.2.1.2
sub _inner {
    my ($s) = @_;
    _fail($s, 'expected "("') unless $$s =~ /\G\(/gc;
    my @items;
    while (pos($$s) < length $$s) {
        $$s =~ /\G +/gc;
        if ($$s =~ /\G\)/gc) {
            return { value => \@items, params => _params($s) };
        }
        push @items, _item($s);
        _fail($s, 'expected SP or ")" in an inner list')
            unless $$s =~ /\G(?=[ )])/gc;
    }
    _fail($s, 'unterminated inner list');
}

# 4.2.3
sub _item {
    my ($s) = @_;
    my $bare = _bare($s);
    return { value => $bare, params => _params($s) };
}

# 4.2.3.1
sub _bare {
    my ($s) = @_;
    return _number($s) if $$s =~ /\G(?=[-0-9])/gc;
    return _string($s) if $$s =~ /\G(?=")/gc;
    return _token($s) if $$s =~ /\G(?=[A-Za-z*])/gc;
    return _binary($s) if $$s =~ /\G(?=:)/gc;
    return _boolean($s) if $$s =~ /\G(?=\?)/gc;
    _fail($s, 'not the start of a bare item');
}

# 4.2.3.2
sub _params {
    my ($s) = @_;
    my (@params, %at);
    while ($$s =~ /\G;/gc) {
        $$s =~ /\G +/gc;
        my $key = _key($s);
        my $value = { type => 'boolean', value => 1 };
        $value = _bare($s) if $$s =~ /\G=/gc;
        if (exists $at{$key}) {
            $params[ $at{$key} ][1] = $value;
        } else {
            $at{$key} = @params;
            push @params, [ $key, $value ];
        }
    }
    return \@params;
}

# 4.2.3.3
sub _key {
    my ($s) = @_;
    _fail($s, 'expected a key') unless $$s =~ /\G([a-z*][a-z0-9_\-.*]*)/gc;
    return $1;
}

# 4.2.4
sub _number {
    my ($s) = @_;
    _fail($s, 'not a number') unless $$s =~ /\G(-?)([0-9]+)(?:\.([0-9]*))?/gc;
    my ($sign, $int, $frac) = ($1, $2, $3);
    if (!defined $frac) {
        _fail($s, 'integer longer than 15 digits') if length $int > 15;
        return { type => 'integer', value => ($sign ? -1 : 1) * $int };
    }
    _fail($s, 'decimal with more than 12 integer digits') if length $int > 12;
    _fail($s, 'decimal without fraction digits') if length $frac == 0;
    _fail($s, 'decimal with more than 3 fraction digits') if length $frac > 3;
    return { type => 'decimal', value => ($sign ? -1 : 1) * "$int.$frac" };
}

# 4.2.5
sub _string {
    my ($s) = @_;
    $$s =~ /\G"/gc or _fail($s, 'expected a DQUOTE');
    my $out = '';
    while (1) {
        if ($$s =~ /\G\\([\\"])/gc) {
            $out .= $1;
        } elsif ($$s =~ /\G\\/gc) {
            _fail($s, 'invalid escape in a string');
        } elsif ($$s =~ /\G"/gc) {
            return { type => 'string', value => $out };
        } elsif ($$s =~ /\G([\x20\x21\x23-\x5b\x5d-\x7e]+)/gc) {
            $out .= $1;
        } else {
            _fail($s, 'unterminated string or invalid character');
        }
    }
}

# 4.2.6
sub _token {
    my ($s) = @_;
    $$s =~ m{\G([A-Za-z*][!#\$%&'*+\-.^_`|~0-9A-Za-z:/]*)}gc
        or _fail($s, 'not a token');
    return { type => 'token', value => $1 };
}

# 4.2.7
sub _binary {
    my ($s) = @_;
    $$s =~ m{\G:([A-Za-z0-9+/=]*):}gc or _fail($s, 'not a byte sequence');
    return { type => 'binary', value => decode_base64($1) };
}

# 4.2.8
sub _boolean {
    my ($s) = @_;
    $$s =~ /\G\?([01])/gc or _fail($s, 'not a boolean');
    return { type => 'boolean', value => $1 + 0 };
}

sub sf_params_hash {
    my ($member) = @_;
    return { map { $_->[0] => $_->[1]{value} } @{ $member->{params} } };
}

1;
