#!/usr/bin/perl
#
# Content-Type and Content-Encoding as Dify sees them (row 4), over
# HTTP/1.1 and HTTP/2.  nginx forwards every header it received, and
# gunicorn 25.3 strips SP and HTAB from both ends of each value, keeps the
# last Content-Type (environ["CONTENT_TYPE"]) and joins repeated
# Content-Encoding headers with ",".  So:
#   - two Content-Type headers that differ once stripped are refused (415),
#     whichever comes first; identical repeats are judged as one;
#   - every element of every Content-Encoding header must be identity (any
#     case) or empty, or 415.
# What passes reaches the upstream with all its headers, in order.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route ids_body);

DifyTest::require_module();

my $KEY      = 'Bearer dataset-0123456789abcdefABCDEF';
my $CONFLICT = 'Content-Type must be sent once; the request has several '
             . 'that differ.';
my $ENCODED  = 'Content-Encoding is not supported; send the JSON body '
             . 'unencoded.';
my $NOT_JSON = 'Content-Type must be application/json.';
my $JSON     = 'application/json';

my $t = DifyTest->new;
$t->start_nginx(server => q{
        location /v1 {
            dify_status on;
            proxy_pass http://upstream;
        }
});

my $PATH = route(uuid(1), 'enable');
my $BODY = ids_body(uuid(2));

sub show {
    my ($v) = @_;
    $v =~ s/([^\x21-\x7e ])/sprintf '\\x%02x', ord $1/ge;
    return "\"$v\"";
}

# @h: [ name => value ] pairs after Authorization, in this order
sub send_req {
    my ($proto, @h) = @_;
    if ($proto eq 'h2') {
        my @l;
        push @l, lc $h[2 * $_], $h[2 * $_ + 1] for 0 .. $#h / 2;
        return $t->h2('PATCH', $PATH, body => $BODY,
            headers => [ authorization => $KEY, @l ]);
    }
    return $t->http('PATCH', $PATH, body => $BODY,
        headers => [ Authorization => $KEY, @h ]);
}

sub describe {
    my (@h) = @_;
    return join ', ', map { "$h[2 * $_]: " . show($h[2 * $_ + 1]) }
        0 .. $#h / 2;
}

sub refused {
    my ($message, @h) = @_;
    for my $proto ('h1', 'h2') {
        $t->reject_ok(send_req($proto, @h), 415, 'unsupported_media_type',
            $message, "$proto: " . describe(@h) . ' -> 415');
    }
}

sub passes {
    my (@h) = @_;
    for my $proto ('h1', 'h2') {
        my $r = send_req($proto, @h);
        my @up = $t->upstream_requests;
        $t->pass_ok($r, method => 'PATCH', uri => $PATH, body => $BODY,
            name => "$proto: " . describe(@h) . ' passes');

        # forwarded as received: the same headers, in the same order
        my @want = map { [ lc $h[2 * $_], $h[2 * $_ + 1] =~ s/\A[ \t]+|[ \t]+\z//gr ] }
                   0 .. $#h / 2;
        my %mine = map { lc $_->[0] => 1 } @want;
        my @got = map { [ lc $_->[0], $_->[1] ] }
                  grep { $mine{ lc $_->[0] } } @{ $up[0]{headers} // [] };
        is_deeply \@got, \@want, "$proto: " . describe(@h)
                                 . ': the upstream got them all, in order';
    }
}


# --- Content-Encoding: every header, every element -------------------------

refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => 'identity',
                  'Content-Encoding' => 'gzip');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => 'gzip',
                  'Content-Encoding' => 'identity');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => 'identity, gzip');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => 'identity,gzip');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => 'gzip, identity');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => 'identity',
                  'Content-Encoding' => 'identity, deflate');
refused($ENCODED, 'Content-Encoding' => 'identity', 'Content-Type' => $JSON,
                  'Content-Encoding' => 'br');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => '',
                  'Content-Encoding' => ' , x-gzip');
refused($ENCODED, 'Content-Type' => $JSON, 'Content-Encoding' => "identity\x0b");

passes('Content-Type' => $JSON, 'Content-Encoding' => 'identity',
       'Content-Encoding' => 'identity');
passes('Content-Type' => $JSON, 'Content-Encoding' => 'identity, IDENTITY');
passes('Content-Type' => $JSON, 'Content-Encoding' => '',
       'Content-Encoding' => "identity\t", 'Content-Encoding' => ' , Identity ,');
passes('Content-Type' => $JSON, 'Content-Encoding' => '');


# --- Content-Type: gunicorn keeps the last; two that differ are refused ----

refused($CONFLICT, 'Content-Type' => $JSON, 'Content-Type' => 'text/plain');
refused($CONFLICT, 'Content-Type' => 'text/plain', 'Content-Type' => $JSON);
refused($CONFLICT, 'Content-Type' => $JSON,
                   'Content-Type' => 'application/json; charset=utf-8');
refused($CONFLICT, 'Content-Type' => $JSON,
                   'Content-Type' => 'application/vnd.api+json');
refused($CONFLICT, 'Content-Type' => $JSON, 'Content-Type' => 'Application/JSON');
refused($CONFLICT, 'Content-Type' => $JSON, 'Content-Type' => '');
refused($CONFLICT, 'Content-Type' => $JSON, 'Content-Type' => $JSON,
                   'Content-Type' => 'text/plain');
refused($CONFLICT, 'Content-Type' => $JSON, 'Content-Encoding' => 'gzip',
                   'Content-Type' => 'text/plain');
refused($CONFLICT, 'Content-Type' => $JSON, 'Content-Type' => "$JSON\x0b");

refused($NOT_JSON, 'Content-Type' => 'text/plain', 'Content-Type' => 'text/plain');
refused($NOT_JSON, 'Content-Type' => 'text/plain', 'Content-Encoding' => 'gzip');

passes('Content-Type' => $JSON, 'Content-Type' => $JSON);
passes('Content-Type' => $JSON, 'Content-Type' => $JSON, 'Content-Type' => $JSON);
passes('Content-Type' => 'application/json; charset=utf-8',
       'Content-Type' => 'application/json; charset=utf-8');
passes('Content-Type' => "$JSON\t", 'Content-Type' => " \t$JSON");
passes('Content-Type' => "$JSON ", 'Content-Type' => $JSON,
       'Content-Encoding' => 'identity', 'Content-Type' => "\t$JSON \t");

$t->done;
done_testing;
