package DifyLimit;

=pod

=head1 NAME

DifyLimit - helpers for the rate-limit and Redis-fault tests (t/1x-*.t)

Built on t/lib/DifyTest.pm; core Perl only.

=head1 FUNCTIONS (exportable)

  fresh_key($tag)        a new API key, unique in this run: "dataset-..."
  key_hash($key)         sha256 hex of the key, as the module hashes it
  tat_key($key, $prefix) the Redis key of its state ("{prefix}{hash}:tat")
  limit_key($key, $prefix)  the key of its override hash
  patch($t, $key, %o)    one valid PATCH on a fresh connection; returns
                         the response with {elapsed} (seconds), or a
                         pseudo response { status => 0, elapsed => ...,
                         error => '...' } when no answer came within
                         $o{timeout} (default 10 s scaled): never dies.
                         %o: ids => [...] (default one id), body => raw,
                         prefix => '/v1', action => 'enable',
                         dataset => uuid, port => N, headers => [...] extra
  patch_bytes($key, %o)  the same request as bytes
  concurrent($t, $n, $key, %o)  opens $n connections (port => N, or
                         ports => [..] round robin), sends a request on each,
                         then reads all answers; returns the responses
  send_pending($t, $key, %o)  a DifyTest::Conn with a request sent, not read
  wait_for($seconds, $code)   polls $code every 50 ms until it returns
                         true or the time is up; returns its last value
  upstream_for($t, $key) upstream requests that carried this key
  rl($res)               { r => N, t => N } parsed from RateLimit, or {}
                         when the header is missing (so ->{r} is undef)
  policy($res)           { q => N, w => N } parsed from RateLimit-Policy,
                         or {}
  limits($res)           both fields parsed strictly as RFC 8941 Lists
                         (t/lib/StructuredFields.pm; dies on a syntax
                         error or a member that is not a String with
                         exactly the draft's Integer parameters):
                         { names => [ policy names in order ],
                           NAME => { q, w, r, t } }, or undef when
                         neither field is present

=cut

use strict;
use warnings;

use Exporter qw(import);
use Digest::SHA qw(sha256_hex);
use Time::HiRes qw(time sleep);

use DifyTest qw(uuid route ids_body build_request);
use StructuredFields qw(sf_list sf_params_hash);

our @EXPORT_OK = qw(fresh_key key_hash tat_key limit_key patch patch_bytes
                    concurrent send_pending wait_for upstream_for rl policy
                    limits);

my $SEQ = 0;

sub fresh_key {
    my ($tag) = @_;
    $tag //= 'k';
    $SEQ++;
    my $rand = join '', map { ('a' .. 'z', 'A' .. 'Z', 0 .. 9)[rand 62] }
        1 .. 24;
    return "dataset-$tag$SEQ" . "x$$" . "Q$rand";
}

sub key_hash { return sha256_hex($_[0]) }

sub tat_key {
    my ($key, $prefix) = @_;
    $prefix //= 'dify:status:';
    return $prefix . '{' . key_hash($key) . '}:tat';
}

sub limit_key {
    my ($key, $prefix) = @_;
    $prefix //= 'dify:status:';
    return $prefix . '{' . key_hash($key) . '}:limit';
}

sub patch_bytes {
    my ($key, %o) = @_;
    my $path = route($o{dataset} // uuid(1), $o{action} // 'enable',
                     $o{prefix} // '/v1');
    my $body = $o{body} // ids_body(@{ $o{ids} // [ uuid(2) ] });
    my @h = (Authorization => "Bearer $key",
             'Content-Type' => 'application/json',
             @{ $o{headers} // [] });
    my ($head, $b) = build_request('PATCH', $path, headers => \@h,
                                   body => $body);
    return $head . $b;
}

sub _read {
    my ($c, $t0, $timeout) = @_;
    my $res = eval { $c->read_response(timeout => $timeout) };
    my $err = $@;
    $c->close;
    my $elapsed = time - $t0;
    if (!$res) {
        return { status => 0, headers => {}, body => '', json => undef,
                 elapsed => $elapsed,
                 error => $err || "no answer within ${timeout}s" };
    }
    $res->{elapsed} = $elapsed;
    return $res;
}

sub patch {
    my ($t, $key, %o) = @_;
    my $timeout = $o{timeout} // DifyTest::timeout(10);
    my $t0 = time;
    my $c = eval { $t->connect(port => $o{port}) };
    return { status => 0, headers => {}, body => '', elapsed => 0,
             error => "connect: $@" } unless $c;
    $c->send(patch_bytes($key, %o));
    return _read($c, $t0, $timeout);
}

sub send_pending {
    my ($t, $key, %o) = @_;
    my $c = $t->connect(port => $o{port});
    $c->send(patch_bytes($key, %o));
    $c->{t0} = time;
    return $c;
}

sub concurrent {
    my ($t, $n, $key, %o) = @_;
    my $timeout = $o{timeout} // DifyTest::timeout(10);
    my @ports = @{ $o{ports} // [ $o{port} // $t->port('PORT') ] };
    my $bytes = patch_bytes($key, %o);
    my @c;
    for my $i (0 .. $n - 1) {
        push @c, $t->connect(port => $ports[ $i % @ports ]);
    }
    my $t0 = time;
    $_->send($bytes) for @c;
    return map { _read($_, $t0, $timeout) } @c;
}

sub wait_for {
    my ($seconds, $code) = @_;
    my $deadline = time + $seconds;
    my $v;
    for (1 .. 100000) {
        $v = $code->();
        return $v if $v;
        last if time > $deadline;
        sleep 0.05;
    }
    return $v;
}

sub upstream_for {
    my ($t, $key) = @_;
    return grep { ($_->{hdr}{authorization} // '') eq "Bearer $key" }
        $t->upstream_requests;
}

sub rl {
    my ($res) = @_;
    my $v = $res->{headers}{ratelimit} // return {};
    $v =~ /^"default";r=(\d+);t=(\d+)$/ or return { raw => $v };
    return { r => $1, t => $2, raw => $v };
}

sub policy {
    my ($res) = @_;
    my $v = $res->{headers}{'ratelimit-policy'} // return {};
    $v =~ /^"default";q=(\d+);w=(\d+)$/ or return { raw => $v };
    return { q => $1, w => $2, raw => $v };
}

sub _members {
    my ($field, $value, @want) = @_;
    my @out;
    for my $m (@{ sf_list($value) }) {
        ref $m->{value} eq 'HASH' && $m->{value}{type} eq 'string'
            or die "$field: a member is not a String\n";
        my @keys = map { $_->[0] } @{ $m->{params} };
        "@keys" eq "@want"
            or die "$field: parameters \"@keys\", not \"@want\"\n";
        $_->[1]{type} eq 'integer' && $_->[1]{value} >= 0
            or die "$field: $_->[0] is not a non-negative Integer\n"
            for @{ $m->{params} };
        push @out, [ $m->{value}{value}, sf_params_hash($m) ];
    }
    return @out;
}

sub limits {
    my ($res) = @_;
    my $p = $res->{headers}{'ratelimit-policy'};
    my $l = $res->{headers}{ratelimit};
    return undef unless defined $p || defined $l;
    die "RateLimit-Policy without RateLimit, or the reverse\n"
        unless defined $p && defined $l;
    my @p = _members('RateLimit-Policy', $p, qw(q w));
    my @l = _members('RateLimit', $l, qw(r t));
    my @pn = map { $_->[0] } @p;
    my @ln = map { $_->[0] } @l;
    die "the fields list other limits: @pn / @ln\n" unless "@pn" eq "@ln";
    my %seen;
    $seen{$_}++ and die "limit $_ listed twice\n" for @pn;
    my $out = { names => \@pn };
    for my $i (0 .. $#p) {
        $out->{ $pn[$i] } = { %{ $p[$i][1] }, %{ $l[$i][1] } };
    }
    return $out;
}

1;
