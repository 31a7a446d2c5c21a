module heretic/peers/echo

go 1.19
