"""Why a client connection stopped reading; it reads again once no reason is left."""
PAUSE_BUFFER = 1  # too much request body buffered for a request not yet sent
PAUSE_UPSTREAM = 2  # the upstream's write buffer is full
PAUSE_STOPPED = 4  # no more requests on this connection (error, or upgrade pending)
PAUSE_HELD = 8  # the request waits for a cold start; its body stays in the client's socket
PAUSE_PIPELINE = 16  # enough pipelined requests wait their turn
