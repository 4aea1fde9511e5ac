from limpyd import model


def test_declare_and_allocate(database, count_commands):
    db = database

    class Boat(model.RedisModel):
        database = db
        namespace = "ns"

    with count_commands(2):
        boat = Boat()
        assert boat.pk.get() == "1"
    assert sorted(database.scan_keys()) == ["ns:boat:collection", "ns:boat:max_pk"]
